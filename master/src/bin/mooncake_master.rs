//! `mooncake_master`: the daemon under the name of Mooncake's C++ binary, which deployments
//! call (scripts, k8s manifests, `shutil.which("mooncake_master")` in serving frameworks). It
//! is the same program as `mooncake-master`: this target compiles that binary's source.

#[path = "../main.rs"]
mod daemon;

fn main() -> anyhow::Result<()> {
    daemon::main()
}
