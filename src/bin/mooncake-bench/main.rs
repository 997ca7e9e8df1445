//! `mooncake-bench`: one binary, one subcommand per layer of the system.
//!
//! - `transfer`: transfer-engine READ/WRITE throughput against a plain-TCP baseline.
//! - `master`: batch metadata RPC throughput against a master.
//! - `store`: the main job: an embedded master, two clients and a layer-wise KV workload.

mod master;
mod sizes;
mod store;
mod transfer;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "mooncake-bench", version, about = "Benchmarks for mooncake-rs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Transfer-engine READ/WRITE throughput, with a plain TCP stream as the baseline.
    Transfer(transfer::Args),
    /// Batch metadata RPC throughput against a master (embedded unless --master is given).
    Master(master::Args),
    /// Layer-wise KV workload through the store client (embedded master and pool holder).
    Store(store::Args),
    /// Internal: the target process `transfer` spawns.
    #[command(hide = true)]
    TransferTarget(transfer::TargetArgs),
    /// Internal: the pool-holding client process `store` spawns.
    #[command(hide = true)]
    StoreHolder(store::HolderArgs),
}

fn main() -> anyhow::Result<()> {
    // Copying batch calls free megabytes of values at once: keep freed heap pages (see there).
    let heap_tuned = mooncake_sys::host_memory::tune_heap_for_batches();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("warn,transfer_engine=info")
            }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    tracing::debug!(heap_tuned, "glibc heap tuning");
    match Cli::parse().command {
        Command::Transfer(a) => transfer::run(a),
        Command::Master(a) => master::run(a),
        Command::Store(a) => store::run(a),
        Command::TransferTarget(a) => transfer::run_target(a),
        Command::StoreHolder(a) => store::run_holder(a),
    }
}
