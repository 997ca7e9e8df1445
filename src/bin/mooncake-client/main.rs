//! `mooncake-client`: a long-lived process that holds a segment of the KV-cache pool, so that
//! inference workers (clients with a segment size of 0, e.g. vLLM's `standalone-store` mode)
//! can restart without losing the cache. It connects a store client that contributes
//! `--global_segment_size` bytes, keeps it mounted (heartbeats, remounts after a master
//! failover), optionally serves the client's `/metrics` and `/health`, and on SIGTERM, SIGINT
//! or SIGHUP unmounts the segment and exits.
//!
//! It answers to Mooncake's `mooncake_client` flag names (see [`flags`]); Mooncake's
//! dummy-client RPC (SGLang's `setup_dummy`) is not served.

mod flags;

use anyhow::Context;
use store_client::Client;

pub(crate) fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = match flags::Args::parse_from_line(std::env::args()) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    for note in args.notes()? {
        tracing::warn!("{note}");
    }
    let cfg = args.client_config()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    rt.block_on(async {
        // Installed before connecting: a signal during the (long, for a big segment) connect
        // still ends in an unmount.
        let signal = shutdown_signal()?;
        let client = Client::connect(cfg)
            .await
            .with_context(|| format!("connecting to the master at {}", args.master))?;
        let segment = client.segment().context("the client mounted no segment")?;
        let ready = serde_json::json!({
            "segment": segment.name,
            "size": segment.size,
            "metrics_addr": client.metrics_addr().map(|a| a.to_string()),
        });
        tracing::info!(
            segment = %segment.name,
            bytes = segment.size,
            master = %args.master,
            metrics = ?client.metrics_addr(),
            "segment mounted; holding it until SIGTERM/SIGINT/SIGHUP"
        );
        println!("{ready}");
        let sig = signal.await?;
        tracing::info!("{sig}: unmounting the segment");
        client.close().await;
        anyhow::Ok(())
    })
}

/// A future that resolves with the name of the first SIGTERM, SIGINT or SIGHUP.
fn shutdown_signal(
) -> anyhow::Result<impl std::future::Future<Output = anyhow::Result<&'static str>>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    Ok(async move {
        Ok(tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            _ = hup.recv() => "SIGHUP",
        })
    })
}
