//! The target process of `mooncake-bench transfer`: an engine exporting one buffer, plus the
//! plain TCP baseline server. Prints `READY <segment name> <baseline addr>` and serves until
//! its stdin closes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};

use transfer_engine::{AlignedBuffer, Engine, EngineConfig, Location};

use super::{baseline, parse_protocol, sizes};

/// Flags of the hidden target process.
#[derive(clap::Args, Debug)]
pub struct TargetArgs {
    /// Bytes of memory to export.
    #[arg(long, default_value = "256M")]
    size: String,
    /// Engine listen address (its segment name when P2P).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Plain-TCP baseline listen address.
    #[arg(long, default_value = "127.0.0.1:0")]
    baseline_listen: SocketAddr,
    /// Transport: auto, tcp or rdma.
    #[arg(long, default_value = "auto")]
    protocol: String,
    /// TCP connections per peer.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// TCP stripe size.
    #[arg(long, default_value = "1M")]
    stripe: String,
}

/// Runs the target process.
pub fn run_target(args: TargetArgs) -> anyhow::Result<()> {
    let size = sizes::parse(&args.size)? as usize;
    let engine = Engine::new(EngineConfig {
        listen_addr: args.listen,
        protocol: parse_protocol(&args.protocol)?,
        tcp_connections_per_peer: args.connections,
        tcp_stripe_size: sizes::parse(&args.stripe)? as usize,
        ..Default::default()
    })?;
    let mut buf = AlignedBuffer::new(size)?;
    buf.as_mut_slice().fill(0x11);
    // SAFETY: `buf` is unregistered below before it drops.
    unsafe { engine.register_memory(buf.as_mut_ptr(), buf.len(), Location::Host)? };
    let listener = TcpListener::bind(args.baseline_listen)?;
    let baseline_addr = listener.local_addr()?;
    let memory = baseline::Window {
        ptr: buf.as_mut_ptr() as usize,
        len: buf.len(),
    };
    baseline::serve(listener, memory)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "READY {} {baseline_addr}", engine.name())?;
    out.flush()?;
    drop(out);
    // Serve until the initiator closes our stdin (or exits).
    let mut sink = Vec::new();
    let _ = std::io::stdin().lock().read_to_end(&mut sink);
    engine.unregister_memory(buf.as_mut_ptr())?;
    Ok(())
}
