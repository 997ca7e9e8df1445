//! `te-target`: a transfer-engine target process for the multi-process tests.
//!
//! Usage: `te-target <bytes> <seed>`. Registers one buffer of `<bytes>` filled with
//! [`pattern`], prints `READY <segment name> <buffer addr> <bytes>` and then answers stdin
//! commands until stdin closes:
//! - `CRC <addr> <len>` prints `CRC <crc32>` of that range of its own memory;
//! - `REGISTER <bytes>` registers one more zeroed buffer and prints `REGION <addr> <bytes>`.
//!
//! It serves over TCP unless `TE_TARGET_PROTOCOL` says `rdma` or `auto`; `TE_TARGET_RDMA_DEVICES`
//! (comma-separated) restricts the RDMA devices it uses.

use std::io::{BufRead, Write};

use transfer_engine::{AlignedBuffer, Engine, EngineConfig, Location, Protocol, RdmaConfig};

/// Initial content of byte `i` of the target buffer.
fn pattern(seed: u64, i: u64) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 9) ^ seed.wrapping_mul(0x9e37)) as u8
}

fn register(engine: &Engine, buf: &mut AlignedBuffer) -> Result<(), Box<dyn std::error::Error>> {
    // SAFETY: every buffer lives in `main`'s vector until the process exits.
    unsafe { engine.register_memory(buf.as_mut_ptr(), buf.len(), Location::Host)? };
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let len: usize = args
        .get(1)
        .ok_or("usage: te-target <bytes> <seed>")?
        .parse()?;
    let seed: u64 = args.get(2).map_or(Ok(1), |s| s.parse())?;
    let protocol = match std::env::var("TE_TARGET_PROTOCOL").as_deref() {
        Ok("rdma") => Protocol::Rdma,
        Ok("auto") => Protocol::Auto,
        _ => Protocol::Tcp,
    };
    let devices = std::env::var("TE_TARGET_RDMA_DEVICES").unwrap_or_default();
    let engine = Engine::new(EngineConfig {
        protocol,
        rdma: RdmaConfig {
            devices: devices
                .split(',')
                .filter(|d| !d.is_empty())
                .map(String::from)
                .collect(),
            ..Default::default()
        },
        ..Default::default()
    })?;
    let mut first = AlignedBuffer::new(len)?;
    for (i, b) in first.as_mut_slice().iter_mut().enumerate() {
        *b = pattern(seed, i as u64);
    }
    register(&engine, &mut first)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "READY {} {} {}", engine.name(), first.addr(), len)?;
    out.flush()?;
    let mut buffers = vec![first];
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["CRC", addr, len] => {
                let (addr, len): (u64, usize) = (addr.parse()?, len.parse()?);
                let buf = buffers
                    .iter()
                    .find(|b| addr >= b.addr() && addr + len as u64 <= b.addr() + b.len() as u64)
                    .ok_or("CRC range outside this target's buffers")?;
                let off = (addr - buf.addr()) as usize;
                let crc = crc32fast::hash(&buf.as_slice()[off..off + len]);
                writeln!(out, "CRC {crc}")?;
            }
            ["REGISTER", len] => {
                let mut b = AlignedBuffer::new(len.parse()?)?;
                register(&engine, &mut b)?;
                writeln!(out, "REGION {} {}", b.addr(), b.len())?;
                buffers.push(b);
            }
            _ => writeln!(out, "ERR unknown command {line:?}")?,
        }
        out.flush()?;
    }
    Ok(())
}
