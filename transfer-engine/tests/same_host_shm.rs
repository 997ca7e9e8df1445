//! Same-host shared memory between two engines: requests into a peer's shared region are
//! copied through a mapping (counted by `shm_stats`), everything else still goes over TCP, and
//! a peer that goes away is noticed.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{pattern_bytes, registered, req, run};
use rand::{Rng, SeedableRng};
use transfer_engine::{
    AlignedBuffer, Engine, EngineConfig, OpCode, Protocol, SegmentHandle, SharedMemory,
    TransferRequest, TransferState, TransferStatus,
};

fn engine(shared_memory: bool) -> Engine {
    Engine::new(EngineConfig {
        protocol: Protocol::Tcp,
        request_timeout: Duration::from_secs(5),
        shared_memory,
        // Large batches on copy threads whatever this host's CPU count.
        copy_threads: 4,
        ..Default::default()
    })
    .unwrap()
}

fn shared(engine: &Engine, len: usize) -> Arc<SharedMemory> {
    let mem = Arc::new(SharedMemory::create("test-pool", len, false).unwrap());
    engine.register_shared_memory(mem.clone()).unwrap();
    mem
}

/// Fills the mapping with `data` (the tests touch it only between batches).
fn fill(mem: &SharedMemory, data: &[u8]) {
    assert_eq!(data.len(), mem.len());
    // SAFETY: the mapping holds `mem.len()` bytes while `mem` lives; nothing else uses it now.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), mem.as_ptr(), data.len()) };
}

/// A copy of the mapping's bytes.
fn contents(mem: &SharedMemory) -> Vec<u8> {
    // SAFETY: as for `fill`.
    unsafe { std::slice::from_raw_parts(mem.as_ptr(), mem.len()) }.to_vec()
}

/// An owner sharing a pool, and a reader with a registered buffer that has opened the owner's
/// segment (keep `owner` bound: dropping it stops the owner).
struct Pair {
    owner: Engine,
    pool: Arc<SharedMemory>,
    reader: Engine,
    local: AlignedBuffer,
    seg: SegmentHandle,
}

/// A pool of `pool_len` bytes filled with `init`'s bytes (when given), and a reader with
/// shared memory on or off and a `local_len`-byte buffer.
fn pair(pool_len: usize, init: Option<&[u8]>, reader_shm: bool, local_len: usize) -> Pair {
    let owner = engine(true);
    let pool = shared(&owner, pool_len);
    if let Some(init) = init {
        fill(&pool, init);
    }
    let reader = engine(reader_shm);
    let local = registered(&reader, local_len);
    let seg = reader.open_segment(owner.name()).unwrap();
    Pair {
        owner,
        pool,
        reader,
        local,
        seg,
    }
}

/// A READ of `len` bytes at `remote` into the start of `local`.
fn read(local: &AlignedBuffer, seg: SegmentHandle, remote: u64, len: u64) -> TransferRequest {
    req(OpCode::Read, local.addr(), seg, remote, len)
}

/// A reader that read once through its mapping of an owner's pool, after the owner went
/// away (its memory stays mapped on the reader's side until the reader notices); the reader's
/// buffer and that read.
fn mapped_then_owner_gone() -> (Engine, AlignedBuffer, [TransferRequest; 1]) {
    let Pair {
        owner,
        pool,
        reader,
        local,
        seg,
    } = pair(64 << 10, None, true, 64 << 10);
    let one = [read(&local, seg, pool.as_ptr() as u64, 4096)];
    assert_eq!(run(&reader, &one)[0], TransferStatus::completed(4096));
    assert_eq!(reader.shm_stats().peers, 1);
    drop(owner);
    drop(pool);
    (reader, local, one)
}

#[test]
fn random_reads_and_writes_go_through_the_mapping_and_keep_every_byte() {
    const POOL: usize = 4 << 20;
    let init = pattern_bytes(1, POOL as u64);
    let Pair {
        pool,
        reader,
        mut local,
        seg,
        owner: _owner,
    } = pair(POOL, Some(&init), true, POOL);
    let base = pool.as_ptr() as u64;

    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut reqs = Vec::new();
    let mut expect = Vec::new();
    for _ in 0..64 {
        let len = rng.random_range(1..=64 << 10) as u64;
        let off = rng.random_range(0..POOL as u64 - len);
        let at = rng.random_range(0..POOL as u64 - len);
        reqs.push(req(OpCode::Read, local.addr() + at, seg, base + off, len));
        expect.push((at, off, len));
    }
    // Reads land where asked (later ones may overwrite earlier ones: check in order).
    let st = run(&reader, &reqs);
    assert!(
        st.iter().all(|s| s.state == TransferState::Completed),
        "{st:?}"
    );
    let mut want = vec![0u8; POOL];
    for &(at, off, len) in &expect {
        want[at as usize..(at + len) as usize]
            .copy_from_slice(&init[off as usize..(off + len) as usize]);
    }
    for &(at, _, len) in &expect {
        assert_eq!(
            local.as_slice()[at as usize..(at + len) as usize],
            want[at as usize..(at + len) as usize]
        );
    }
    let after_reads = reader.shm_stats();
    assert_eq!(after_reads.requests, 64);
    assert_eq!(after_reads.peers, 1);

    // Writes: the whole local buffer with a new pattern, in 1 MiB requests.
    let fresh = pattern_bytes(2, POOL as u64);
    local.as_mut_slice().copy_from_slice(&fresh);
    let writes: Vec<_> = (0..4)
        .map(|k| {
            let off = k * (1 << 20);
            req(OpCode::Write, local.addr() + off, seg, base + off, 1 << 20)
        })
        .collect();
    let st = run(&reader, &writes);
    assert!(
        st.iter().all(|s| *s == TransferStatus::completed(1 << 20)),
        "{st:?}"
    );
    assert_eq!(contents(&pool), fresh);
    assert_eq!(reader.shm_stats().requests, 68);
    assert_eq!(reader.shm_stats().bytes, after_reads.bytes + POOL as u64);

    // Back in one batch of 16 reads with the halves of the pool swapped: 4 MiB without
    // overlaps, so it is spread over the copy threads.
    local.as_mut_slice().fill(0);
    let quarter = (POOL / 16) as u64;
    let reads: Vec<_> = (0..16u64)
        .map(|k| {
            let (at, from) = (k * quarter, ((k + 8) % 16) * quarter);
            req(OpCode::Read, local.addr() + at, seg, base + from, quarter)
        })
        .collect();
    let st = run(&reader, &reads);
    assert!(
        st.iter().all(|s| *s == TransferStatus::completed(quarter)),
        "{st:?}"
    );
    let half = POOL / 2;
    assert!(local.as_slice()[..half] == fresh[half..]);
    assert!(local.as_slice()[half..] == fresh[..half]);
}

#[test]
fn ordinary_memory_of_the_same_peer_still_goes_over_tcp() {
    let Pair {
        owner,
        pool,
        reader,
        local,
        seg,
    } = pair(64 << 10, Some(&[0x5a; 64 << 10]), true, 128 << 10);
    let plain = registered(&owner, 64 << 10);
    let st = run(
        &reader,
        &[
            read(&local, seg, pool.as_ptr() as u64, 64 << 10),
            req(
                OpCode::Read,
                local.addr() + (64 << 10),
                seg,
                plain.addr(),
                64 << 10,
            ),
            // Straddles the end of the shared region: refused by the engine's own check.
            read(&local, seg, pool.as_ptr() as u64 + 100, 64 << 10),
        ],
    );
    assert_eq!(st[0], TransferStatus::completed(64 << 10));
    assert_eq!(st[1], TransferStatus::completed(64 << 10));
    assert!(matches!(st[2].state, TransferState::Failed(_)), "{st:?}");
    assert!(local.as_slice()[..64 << 10].iter().all(|&b| b == 0x5a));
    assert_eq!(&local.as_slice()[64 << 10..], plain.as_slice());
    assert_eq!(
        reader.shm_stats().requests,
        1,
        "only the shared region is mapped"
    );
}

#[test]
fn with_shared_memory_off_everything_goes_over_tcp() {
    let Pair {
        pool,
        reader,
        local,
        seg,
        owner: _owner,
    } = pair(64 << 10, Some(&[3; 64 << 10]), false, 64 << 10);
    let st = run(
        &reader,
        &[read(&local, seg, pool.as_ptr() as u64, 64 << 10)],
    );
    assert_eq!(st[0], TransferStatus::completed(64 << 10));
    assert!(local.as_slice().iter().all(|&b| b == 3));
    assert_eq!(reader.shm_stats().requests, 0);
}

#[test]
fn a_peer_that_went_away_fails_like_any_dead_peer_and_its_mapping_is_dropped() {
    let (reader, _local, one) = mapped_then_owner_gone();
    let st = run(&reader, &one);
    assert!(
        matches!(
            st[0].state,
            TransferState::Failed(_) | TransferState::TimedOut
        ),
        "{st:?}"
    );
    let s = reader.shm_stats();
    assert_eq!(
        s.requests, 1,
        "nothing more was served from the old mapping"
    );
    assert_eq!(s.peers, 0, "the mapping was dropped");
}

#[test]
fn an_unregistered_region_is_not_used_through_an_old_mapping() {
    let Pair {
        owner,
        pool: old,
        reader,
        local,
        seg,
    } = pair(64 << 10, Some(&[1; 64 << 10]), true, 64 << 10);
    let at_old = [read(&local, seg, old.as_ptr() as u64, 4096)];
    assert_eq!(run(&reader, &at_old)[0], TransferStatus::completed(4096));
    assert_eq!(reader.shm_stats().requests, 1);

    // The owner stops sharing it (the test keeps the memory, so the address is not reused)
    // and shares another region. The reader's cached descriptor still lists the old one.
    owner.unregister_memory(old.as_ptr()).unwrap();
    let new = shared(&owner, 64 << 10);
    fill(&new, &[2; 64 << 10]);
    let st = run(&reader, &at_old);
    assert!(matches!(st[0].state, TransferState::Failed(_)), "{st:?}");
    assert_eq!(
        reader.shm_stats().requests,
        1,
        "the old mapping served nothing"
    );

    // The new region is found (descriptor refreshed) and mapped.
    let at_new = [read(&local, seg, new.as_ptr() as u64, 4096)];
    assert_eq!(run(&reader, &at_new)[0], TransferStatus::completed(4096));
    assert!(local.as_slice()[..4096].iter().all(|&b| b == 2));
    let s = reader.shm_stats();
    assert_eq!((s.requests, s.peers), (2, 1), "{s:?}");
}

#[test]
fn a_dead_owners_mapping_is_dropped_even_without_traffic_to_it() {
    let (reader, _local, _) = mapped_then_owner_gone();
    // Nothing is sent to it again: the reaper alone notices (it looks every second).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while reader.shm_stats().peers != 0 {
        assert!(std::time::Instant::now() < deadline, "mapping still held");
        std::thread::sleep(Duration::from_millis(50));
    }
}
