//! `mooncake_client`: the pool-holder daemon under the name of Mooncake's C++ binary, which
//! deployments and connector docs call. It is the same program as `mooncake-client`: this
//! target compiles that binary's source.

#[path = "mooncake-client/main.rs"]
mod daemon;

fn main() -> anyhow::Result<()> {
    daemon::main()
}
