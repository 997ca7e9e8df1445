//! `mooncake-bench store` (being written).

/// Flags of `mooncake-bench store`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs the benchmark.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("mooncake-bench store is not built yet")
}

/// Flags of the hidden pool-holder process.
#[derive(clap::Args, Debug)]
pub struct HolderArgs {}

/// Runs the pool-holder process.
pub fn run_holder(_args: HolderArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
