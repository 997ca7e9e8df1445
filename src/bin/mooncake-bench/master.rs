//! `mooncake-bench master` (being written).

/// Flags of `mooncake-bench master`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs the benchmark.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("mooncake-bench master is not built yet")
}
