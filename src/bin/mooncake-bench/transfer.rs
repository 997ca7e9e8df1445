//! `mooncake-bench transfer` (being written).

/// Flags of `mooncake-bench transfer`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs the benchmark.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("mooncake-bench transfer is not built yet")
}

/// Flags of the hidden target process.
#[derive(clap::Args, Debug)]
pub struct TargetArgs {}

/// Runs the target process.
pub fn run_target(_args: TargetArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
