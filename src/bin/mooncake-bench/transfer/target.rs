//! The target process of `mooncake-bench transfer`: an engine exporting one buffer, plus the
//! plain TCP baseline server. Prints `READY <segment name> <baseline addr>` and serves until
//! its stdin closes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};

use transfer_engine::{AlignedBuffer, Engine, Location};

use super::{baseline, sizes, EngineFlags};

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
    #[command(flatten)]
    engine: EngineFlags,
}

/// Runs the target process.
pub fn run_target(args: TargetArgs) -> anyhow::Result<()> {
    let size = sizes::parse(&args.size)? as usize;
    let engine = Engine::new(args.engine.config(args.listen)?)?;
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
