//! The daemon started as Mooncake's `mooncake_master --config_path=FILE.json` takes its
//! settings from the file, the command line winning; a bad file stops it with an error naming
//! the file and the key.

mod common;

use std::io::Write;
use std::time::Duration;

use common::{
    free_port, http_response, run_master_to_exit, spawn_exe, wait_for, MOONCAKE_MASTER_EXE,
};
use mooncake_master::MasterClient;

fn json_file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new()
        .suffix(".json")
        .tempfile()
        .expect("temp file");
    f.write_all(text.as_bytes())
        .expect("writing the config file");
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_sets_ports_and_the_command_line_overrides_it() {
    let (rpc_port, file_http_port, line_http_port) = (free_port(), free_port(), free_port());
    let file = json_file(&format!(
        r#"{{
            "rpc_address": "127.0.0.1",
            "rpc_port": {rpc_port},
            "metrics_port": {file_http_port},
            "default_kv_lease_ttl": 5000,
            "client_live_ttl_sec": 20,
            "eviction_high_watermark_ratio": 0.8,
            "enable_gc": false
        }}"#
    ));
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
    assert!(master.terminate(Duration::from_secs(10)), "clean exit");
}

#[test]
fn a_bad_config_file_is_a_clear_error() {
    let file = json_file(r#"{"rpc_port": 50051, "rpc_prot": 1}"#);
    let path = file.path().display().to_string();
    let (code, err) = run_master_to_exit(&[format!("--config_path={path}")]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains(&format!("config file {path}: unknown key \"rpc_prot\"")),
        "output: {err}"
    );
    let (code, err) = run_master_to_exit(&["--config_path=/nonexistent/master.json"]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("config file /nonexistent/master.json: No such file"),
        "output: {err}"
    );
}
