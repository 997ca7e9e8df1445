//! The daemon started as Mooncake's `mooncake_master --config_path=master.yaml` (the file
//! shaped like Mooncake's shipped one) takes its settings from the file, the command line
//! winning; a bad file (YAML or JSON) stops it with an error naming the file and the key.

mod common;

use std::io::Write;
use std::time::Duration;

use common::{
    free_port, http_response, run_master_to_exit, spawn_exe, wait_for, MOONCAKE_MASTER_EXE,
};
use mooncake_master::MasterClient;

fn config_file(text: &str, ext: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new()
        .suffix(ext)
        .tempfile()
        .expect("temp file");
    f.write_all(text.as_bytes())
        .expect("writing the config file");
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_sets_ports_and_the_command_line_overrides_it() {
    let (rpc_port, file_http_port, line_http_port) = (free_port(), free_port(), free_port());
    let file = config_file(
        &format!(
            "enable_metric_reporting: true\n\
             metrics_port: {file_http_port}\n\
             rpc_port: {rpc_port}\n\
             rpc_thread_num: 2\n\
             rpc_address: \"0.0.0.0\"\n\
             rpc_interface: \"lo\"\n\
             \n\
             default_kv_lease_ttl: 5000\n\
             default_kv_soft_pin_ttl: 1800000\n\
             allow_evict_soft_pinned_objects: true\n\
             eviction_ratio: 0.1\n\
             # a comment, as in Mooncake's file\n\
             eviction_high_watermark_ratio: 1.0\n\
             dynamic_replication_mode: \"off\"\n\
             enable_multi_tenants: false\n\
             enable_ha: false\n\
             etcd_endpoints: \"http://localhost:2379\"\n\
             cluster_id: \"mooncake_cluster\"\n\
             memory_allocator: \"offset\"\n\
             client_active_ttl_sec: 60\n\
             client_suspicion_ttl_sec: 60\n\
             enable_oplog: false\n\
             enable_http_metadata_server: false\n"
        ),
        ".yaml",
    );
    let mut master = spawn_exe(
        MOONCAKE_MASTER_EXE,
        "mooncake_master with a config file",
        &[
            format!("--config_path={}", file.path().display()),
            format!("--metrics_port={line_http_port}"),
        ],
    );
    let rpc = format!("127.0.0.1:{rpc_port}");
    wait_for(
        Duration::from_secs(10),
        "master on the file's rpc_port",
        || async { MasterClient::connect(&rpc).await.ok() },
    )
    .await;
    let http = format!("127.0.0.1:{line_http_port}");
    let (status, _, body) = http_response(&http, "/get_all_segments")
        .await
        .expect("admin HTTP on the command line's metrics_port");
    assert_eq!((status, body.as_str()), (200, ""));
    assert!(
        http_response(&format!("127.0.0.1:{file_http_port}"), "/health")
            .await
            .is_none(),
        "the file's metrics_port is overridden"
    );
    // rpc_interface wins over rpc_address: the master bound lo's address.
    let (_, _, leader) = http_response(&http, "/leader").await.expect("/leader");
    assert!(
        leader.contains(&format!("\"127.0.0.1:{rpc_port}\"")),
        "{leader}"
    );
    assert!(master.terminate(Duration::from_secs(10)), "clean exit");
}

#[test]
fn a_bad_config_file_is_a_clear_error() {
    for (text, ext) in [
        (r#"{"rpc_port": 50051, "rpc_prot": 1}"#, ".json"),
        ("rpc_port: 50051\nrpc_prot: 1\n", ".yaml"),
    ] {
        let file = config_file(text, ext);
        let path = file.path().display().to_string();
        let (code, err) = run_master_to_exit(&[format!("--config_path={path}")]);
        assert_eq!(code, Some(2));
        assert!(
            err.contains(&format!("config file {path}: unknown key \"rpc_prot\"")),
            "output: {err}"
        );
    }
    let (code, err) = run_master_to_exit(&["--config_path=/nonexistent/master.json"]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("config file /nonexistent/master.json: No such file"),
        "output: {err}"
    );
}
