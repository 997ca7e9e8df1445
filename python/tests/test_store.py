"""The Python API against an embedded master and a second client holding the pool (through
same-host shared memory by default; over TCP where a test turns it off).

Run with `scripts/python-test` (builds the extension first). The GPU test runs where PyTorch
sees a CUDA device and is skipped elsewhere.
"""

import array
import ctypes
import os
import socket
import subprocess
import sys
import threading
import unittest
import urllib.request
import warnings

import mooncake_rs
from mooncake_rs import Master, MooncakeDistributedStore, ReplicateConfig, Store, StoreError

MIB = 1 << 20


def value(i, n):
    return bytes((i * 31 + j * 7) & 0xFF for j in range(n))


def run_python(script, **env_vars):
    """Runs `script` in a fresh interpreter that imports this mooncake_rs (with `env_vars`
    added to its environment, and no log settings but those)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RUST_LOG", "MC_LOG_LEVEL")}
    env.update(env_vars)
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.abspath(mooncake_rs.__file__)), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=60)



def free_port():
    """A TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]

class StoreTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.master = Master()
        cls.holder = Store(cls.master.address, segment_size=64 * MIB, protocol="tcp")
        cls.worker = Store(cls.master.address, segment_size=0, protocol="tcp", staging_size=16 * MIB)

    @classmethod
    def tearDownClass(cls):
        cls.worker.close()
        cls.holder.close()
        cls.master.stop()

    def test_put_get_exists_remove_and_errors(self):
        w = self.worker
        w.put("single", b"hello")
        self.assertEqual(w.get("single"), b"hello")
        self.assertTrue(w.exists("single"))
        with self.assertRaises(StoreError) as e:
            w.put("single", b"again")
        self.assertEqual(e.exception.args[1], "OBJECT_ALREADY_EXISTS")
        # A read holds a lease (10 s): the object may not be removed, but an upsert replaces it
        # (in new space; the old bytes stay for the lease's readers).
        w.upsert("single", b"replaced")
        self.assertEqual(w.get("single"), b"replaced")
        w.put("fresh", b"v1")
        w.upsert("fresh", b"v2")
        self.assertEqual(self.holder.get("fresh"), b"v2")
        w.put("doomed", b"x")
        w.remove("doomed")
        self.assertFalse(w.exists("doomed"))
        with self.assertRaises(StoreError) as e:
            w.get("doomed")
        code, name, message = e.exception.args
        self.assertEqual(name, "OBJECT_NOT_FOUND")
        self.assertEqual(mooncake_rs.error_name(code), "OBJECT_NOT_FOUND")
        self.assertTrue(message)

    def test_without_shared_memory_bytes_go_over_tcp(self):
        holder = Store(self.master.address, segment_size=8 * MIB, protocol="tcp", shared_memory=False)
        worker = Store(self.master.address, segment_size=0, protocol="tcp", shared_memory=False)
        try:
            vals = {f"tcp-only/{i}": value(i, 1000 + i) for i in range(8)}
            self.assertEqual(worker.batch_put(list(vals), list(vals.values())), [0] * 8)
            self.assertEqual(worker.batch_get(list(vals)), list(vals.values()))
        finally:
            worker.close()
            holder.close()

    def test_large_batches_on_copy_threads_through_shared_memory(self):
        # 8 MiB per batch: values are staged and copied on 4 threads, and the pool is read and
        # written through its mapping.
        worker = Store(self.master.address, segment_size=0, protocol="tcp", staging_size=32 * MIB,
                       copy_threads=4)
        try:
            vals = {f"threads/{i}": (value(i, 4096) * 257)[: MIB + 3 * i] for i in range(8)}
            self.assertEqual(worker.batch_put(list(vals), list(vals.values())), [0] * 8)
            self.assertEqual(worker.batch_get(list(vals)), list(vals.values()))
            self.assertGreater(worker.metrics()["shm"]["requests"], 0)
        finally:
            worker.close()

    def test_segment_in_reserved_huge_pages_or_ordinary_ones(self):
        # Reserved huge pages where the host has them free, ordinary pages otherwise: either
        # way the segment holds objects (its size grows to whole huge pages).
        master = Master()
        try:
            holder = Store(master.address, segment_size=3 * MIB, protocol="tcp",
                           reserved_huge_pages=True)
            worker = Store(master.address, segment_size=0, protocol="tcp")
            vals = {f"huge/{i}": value(i, 64 * 1024) for i in range(16)}
            self.assertEqual(worker.batch_put(list(vals), list(vals.values())), [0] * 16)
            self.assertEqual(worker.batch_get(list(vals)), list(vals.values()))
            worker.close()
            holder.close()
        finally:
            master.stop()

    def test_batches_give_one_result_per_key(self):
        w = self.worker
        keys = [f"b{i}" for i in range(64)]
        vals = [value(i, 4096 + i) for i in range(64)]
        self.assertEqual(w.batch_put(keys, vals), [0] * 64)
        # An empty key, a key already stored and a repeated key fail alone.
        codes = w.batch_put(["ok-1", "", "b3", "dup", "dup"], [b"a", b"b", b"c", b"d", b"e"])
        self.assertEqual(codes[0], 0)
        self.assertEqual(mooncake_rs.error_name(codes[1]), "INVALID_KEY")
        self.assertEqual(mooncake_rs.error_name(codes[2]), "OBJECT_ALREADY_EXISTS")
        self.assertEqual(codes[3], 0)
        self.assertEqual(mooncake_rs.error_name(codes[4]), "INVALID_PARAMS")
        got = w.batch_get(["b5", "missing", "b63"])
        self.assertEqual(got, [vals[5], None, vals[63]])
        with_codes = w.batch_get_codes(["b1", "missing"])
        self.assertEqual(with_codes[0], (vals[1], 0))
        self.assertEqual(mooncake_rs.error_name(with_codes[1][1]), "OBJECT_NOT_FOUND")
        # Fresh keys: a read or an existence check grants a 10 s lease, as in Mooncake, during
        # which the object cannot be removed.
        self.assertEqual(w.batch_put(["r0", "r1"], [b"0", b"1"]), [0, 0])
        self.assertEqual(w.batch_remove(["r0", "r1", "missing"]), [0, 0, -704])
        self.assertEqual(w.batch_exists(["r0", "b2", "missing"]), [0, 1, 0])
        with self.assertRaises(ValueError):
            w.batch_put(["x"], [])

    def test_zero_copy_with_registered_host_memory(self):
        w = self.worker
        n = 32
        block = 16 << 10
        src = ctypes.create_string_buffer(n * block)
        dst = ctypes.create_string_buffer(n * block)
        for i in range(n):
            ctypes.memmove(ctypes.addressof(src) + i * block, value(i, block), block)
        sa, da = ctypes.addressof(src), ctypes.addressof(dst)
        w.register_buffer(sa, n * block)
        w.register_buffer(da, n * block)
        try:
            keys = [f"layer{i // 4}/block{i % 4}" for i in range(n)]
            self.assertEqual(w.batch_put_from(keys, [sa + i * block for i in range(n)], [block] * n), [block] * n)
            self.assertEqual(w.batch_get_into(keys, [da + i * block for i in range(n)], [block] * n), [block] * n)
            self.assertEqual(dst.raw, src.raw)
            # Outside registered memory: a negative code for that key only.
            outside = ctypes.create_string_buffer(block)
            codes = w.batch_get_into(keys[:2], [da, ctypes.addressof(outside)], [block, block])
            self.assertEqual(codes[0], block)
            self.assertLess(codes[1], 0)
            # One object gathered from two ranges, scattered back into two others.
            self.assertEqual(w.put_from_parts("parts", [sa, sa + 5 * block], [block, block]), 2 * block)
            self.assertEqual(w.get_into_parts("parts", [da + 7 * block, da], [block, block]), 2 * block)
            self.assertEqual(dst.raw[7 * block:8 * block], value(0, block))
            self.assertEqual(dst.raw[:block], value(5, block))
            self.assertEqual(w.get_into("missing", da, block), -704)
            # Byte ranges: two of one object, one of another, one past the end, one missing.
            k0, k1 = keys[0], keys[1]
            codes = w.batch_get_ranges(
                [k0, k1, k0, k1, "missing"],
                [10, 0, block - 6, block - 1, 0],
                [da, da + 100, da + 200, da + 300, da + 400],
                [20, 50, 6, 2, 8],
            )
            self.assertEqual(codes, [20, 50, 6, -600, -704])
            self.assertEqual(dst.raw[0:20], value(0, block)[10:30])
            self.assertEqual(dst.raw[100:150], value(1, block)[0:50])
            self.assertEqual(dst.raw[200:206], value(0, block)[block - 6:])
            with self.assertRaises(ValueError):
                w.batch_get_ranges([k0], [0, 1], [da], [4])
        finally:
            w.unregister_buffer(sa)
            w.unregister_buffer(da)

    def test_threads_share_one_store(self):
        errors = []

        def work(t):
            try:
                for i in range(20):
                    k = f"t{t}/{i}"
                    self.worker.put(k, value(t + i, 1000))
                    if self.worker.get(k) != value(t + i, 1000):
                        errors.append(k)
            except Exception as e:  # reported below
                errors.append(repr(e))

        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])

    def test_metrics_count_calls(self):
        self.worker.put("m", b"x")
        self.worker.get("m")
        metrics = self.worker.metrics()
        ops = {o["kind"]: o for o in metrics["ops"]}
        self.assertGreaterEqual(ops["get"]["ops"], 1)
        self.assertGreaterEqual(ops["put"]["keys"], 1)
        # Holder and worker share a host: the bytes went through the holder's mapped pool.
        self.assertGreaterEqual(metrics["shm"]["requests"], 2)
        self.assertGreaterEqual(metrics["shm"]["peers"], 1)

    def test_bad_arguments_are_clear_errors(self):
        with self.assertRaises(ValueError):
            Store(self.master.address, protocol="carrier-pigeon")
        with self.assertRaises(StoreError):
            Store("127.0.0.1:1", segment_size=0)
        with self.assertRaises(ValueError):
            self.worker.register_buffer(0, 4096)


class CompatTest(unittest.TestCase):
    """Mooncake's Python API (status codes, setup()), as existing connectors call it."""

    @classmethod
    def setUpClass(cls):
        cls.master = Master()
        cls.holder = Store(cls.master.address, segment_size=64 * MIB, protocol="tcp")
        cls.store = MooncakeDistributedStore()
        rc = cls.store.setup("127.0.0.1", "P2PHANDSHAKE", 0, 16 * MIB, "tcp", "", cls.master.address)
        assert rc == 0, rc

    @classmethod
    def tearDownClass(cls):
        cls.store.close()
        cls.holder.close()
        cls.master.stop()

    def test_copying_calls_return_status_codes(self):
        s = self.store
        self.assertEqual(s.put("c1", b"one"), 0)
        self.assertEqual(s.put("c1", b"again"), 0)  # Mooncake: an existing key is success
        self.assertEqual(s.get("c1"), b"one")
        self.assertEqual(s.get("nope"), b"")
        self.assertEqual(s.is_exist("c1"), 1)
        self.assertEqual(s.is_exist("nope"), 0)
        self.assertEqual(s.put_batch(["c2", "c3"], [b"two", b"three"]), 0)
        self.assertEqual(s.get_batch(["c3", "nope", "c2"]), [b"three", b"", b"two"])
        self.assertEqual(s.batch_is_exist(["c2", "nope"]), [1, 0])
        self.assertEqual(s.put("gone", b"x"), 0)
        self.assertEqual(s.remove("gone"), 0)
        self.assertEqual(mooncake_rs.error_name(s.remove("gone")), "OBJECT_NOT_FOUND")
        cfg = ReplicateConfig()
        cfg.replica_num = 1
        cfg.with_soft_pin = True
        self.assertEqual(s.put("pinned", b"p", cfg), 0)
        self.assertEqual(self.holder.get("pinned"), b"p")

    def test_zero_copy_calls_and_multi_buffers(self):
        s = self.store
        n, block = 8, 8192
        src = ctypes.create_string_buffer(n * block)
        dst = ctypes.create_string_buffer(n * block)
        for i in range(n):
            ctypes.memmove(ctypes.addressof(src) + i * block, value(i + 100, block), block)
        sa, da = ctypes.addressof(src), ctypes.addressof(dst)
        self.assertEqual(s.register_buffer(sa, n * block), 0)
        self.assertEqual(s.register_buffer(da, n * block), 0)
        self.assertLess(s.register_buffer(sa + 16, 64), 0)  # overlaps
        try:
            keys = [f"z{i}" for i in range(n)]
            self.assertEqual(s.batch_put_from(keys, [sa + i * block for i in range(n)], [block] * n), [0] * n)
            self.assertEqual(s.batch_get_into(keys, [da + i * block for i in range(n)], [block] * n), [block] * n)
            self.assertEqual(dst.raw, src.raw)
            self.assertEqual(s.put_from("zz", sa, block), 0)
            self.assertEqual(s.get_into("zz", da + block, block), block)
            self.assertEqual(s.get_into("nope", da, block), -704)
            # Two layers per object, gathered then scattered in swapped order.
            self.assertEqual(
                s.batch_put_from_multi_buffers(["m0"], [[sa, sa + 2 * block]], [[block, block]]), [0]
            )
            self.assertEqual(
                s.batch_get_into_multi_buffers(["m0"], [[da + 3 * block, da]], [[block, block]]),
                [2 * block],
            )
            self.assertEqual(dst.raw[3 * block:4 * block], value(100, block))
            self.assertEqual(dst.raw[:block], value(102, block))
            # Lists that disagree: INVALID_PARAMS for every key, nothing stored.
            self.assertEqual(s.batch_put_from(["a", "b"], [sa], [block, block]), [-600, -600])
            self.assertEqual(s.is_exist("a"), 0)
        finally:
            self.assertEqual(s.unregister_buffer(sa), 0)
            self.assertEqual(s.unregister_buffer(da), 0)

    def test_put_of_an_existing_key_succeeds_as_in_mooncake(self):
        s = self.store
        self.assertEqual(s.put("dup/a", b"first"), 0)
        self.assertEqual(s.put("dup/a", b"second"), 0)
        self.assertEqual(s.put_parts("dup/a", b"third"), 0)
        self.assertEqual(s.put_batch(["dup/a", "dup/b"], [b"fourth", b"bee"]), 0)
        # The first object stays; the other keys of a batch are stored.
        self.assertEqual(s.get("dup/a"), b"first")
        self.assertEqual(s.get("dup/b"), b"bee")
        buf = ctypes.create_string_buffer(64)
        ptr = ctypes.addressof(buf)
        self.assertEqual(s.register_buffer(ptr, 64), 0)
        try:
            self.assertEqual(s.put_from("dup/a", ptr, 8), 0)
            self.assertEqual(s.batch_put_from(["dup/a", "dup/c"], [ptr, ptr + 8], [8, 8]), [0, 0])
            self.assertEqual(s.batch_put_from_multi_buffers(["dup/b"], [[ptr, ptr + 4]], [[4, 4]]), [0])
        finally:
            self.assertEqual(s.unregister_buffer(ptr), 0)
        self.assertEqual(s.get("dup/a"), b"first")
        self.assertEqual(s.get_size("dup/c"), 8)
        # Other failures are still reported.
        self.assertEqual(mooncake_rs.error_name(s.put("", b"x")), "INVALID_KEY")
        # The native API keeps reporting the existing key.
        with self.assertRaises(StoreError) as e:
            self.holder.put("dup/a", b"x")
        self.assertEqual(e.exception.args[1], "OBJECT_ALREADY_EXISTS")
        self.assertEqual([mooncake_rs.error_name(c) for c in self.holder.batch_put(["dup/b"], [b"x"])],
                         ["OBJECT_ALREADY_EXISTS"])

    def test_upserts_replace_values_and_fail_when_they_did_not_store(self):
        s = self.store
        n = 4096
        buf = ctypes.create_string_buffer(2 * n)
        p = ctypes.addressof(buf)
        ctypes.memmove(p, value(1, n), n)
        ctypes.memmove(p + n, value(2, n), n)
        self.assertEqual(s.register_buffer(p, 2 * n), 0)
        try:
            self.assertEqual(s.batch_upsert_from(["up/a", "up/b"], [p, p + n], [n, n]), [0, 0])
            # New bytes for both, one of another size (new space), with no read in between:
            # TransferQueue re-writes its keys this way, step after step.
            ctypes.memmove(p, value(3, n), n)
            self.assertEqual(s.batch_upsert_from(["up/a", "up/b"], [p, p], [n, 100], config=None), [0, 0])
            self.assertEqual(s.upsert_from("up/c", p + n, n), 0)
            self.assertEqual(s.upsert_from("up/c", p, n, ReplicateConfig()), 0)
            self.assertEqual(s.batch_upsert_from_multi_buffers(["up/m"], [[p, p + n]], [[10, 10]]), [0])
            self.assertEqual(s.batch_upsert_from_multi_buffers(["up/m"], [[p + n, p]], [[10, 10]]), [0])
            self.assertEqual(s.get("up/a"), value(3, n))
            self.assertEqual(s.get("up/b"), value(3, n)[:100])
            self.assertEqual(s.get("up/c"), value(3, n))
            self.assertEqual(s.get("up/m"), value(2, n)[:10] + value(3, n)[:10])
            # Lists that disagree: INVALID_PARAMS for every key, nothing stored.
            self.assertEqual(s.batch_upsert_from(["up/x", "up/y"], [p], [n, n]), [-600, -600])
            self.assertEqual(s.is_exist("up/x"), 0)
            # Those reads hold 10 s leases; an upsert replaces the object anyway (as Mooncake's
            # does), in new space, keeping the old bytes for the lease's readers.
            codes = s.batch_upsert_from(["up/a", "up/new"], [p + n, p + n], [n, n])
            self.assertEqual(codes, [0, 0])
            self.assertEqual(s.upsert_from("up/b", p + n, n), 0)
            self.assertEqual(s.get("up/a"), value(2, n))
            self.assertEqual(s.get("up/b"), value(2, n))
            self.assertEqual(s.get("up/new"), value(2, n))
        finally:
            self.assertEqual(s.unregister_buffer(p), 0)
        # The copying upserts take any buffer-protocol object and an optional config.
        cfg = ReplicateConfig()
        cfg.with_hard_pin = True
        self.assertEqual(s.put("up/k", b"one"), 0)
        self.assertEqual(s.upsert("up/k", b"two"), 0)
        self.assertEqual(s.upsert_parts("up/k", b"th", bytearray(b"ree")), 0)
        self.assertEqual(s.upsert_batch(["up/k", "up/l"], [b"four", memoryview(b"ell")]), 0)
        self.assertEqual(s.upsert_batch(["up/l"], [b"L2"], cfg), 0)
        self.assertEqual(s.upsert("up/p", b"pinned", config=cfg), 0)
        self.assertEqual(s.get_batch(["up/k", "up/l", "up/p"]), [b"four", b"L2", b"pinned"])
        # Read just now (leased), and replaced all the same.
        self.assertEqual(s.upsert("up/k", b"five"), 0)
        self.assertEqual(s.upsert_parts("up/k", b"s", b"ix"), 0)
        self.assertEqual(s.get("up/k"), b"six")
        # upsert_batch answers one int, like put_batch: the first failing key's code; the other
        # keys of the batch are stored.
        self.assertEqual(mooncake_rs.error_name(s.upsert_batch(["up/z", ""], [b"z", b"e"])), "INVALID_KEY")
        self.assertEqual(s.get("up/z"), b"z")
        self.assertEqual(s.upsert_batch(["up/q"], []), -600)
        self.assertEqual(mooncake_rs.error_name(s.upsert("", b"x")), "INVALID_KEY")

    def test_group_ids_per_key_of_batch_puts(self):
        # Connectors (vLLM's store worker, SGLang's HiCache) switch to grouped puts on this.
        self.assertTrue(hasattr(ReplicateConfig, "group_ids"))
        s = self.store
        cfg = ReplicateConfig()
        self.assertEqual(cfg.group_ids, [])
        cfg.group_ids = ["g", "g"]
        self.assertEqual(cfg.group_ids, ["g", "g"])
        self.assertIn("group_ids=[\"g\", \"g\"]", repr(cfg))
        n, block = 4, 4096
        src = ctypes.create_string_buffer(n * block)
        for i in range(n):
            ctypes.memmove(ctypes.addressof(src) + i * block, value(i + 300, block), block)
        sa = ctypes.addressof(src)
        self.assertEqual(s.register_buffer(sa, n * block), 0)
        try:
            self.assertEqual(s.batch_put_from(["grp/k", "grp/v"], [sa, sa + block], [block] * 2, cfg), [0, 0])
            self.assertEqual(s.get("grp/v"), value(301, block))
            mixed = ReplicateConfig()
            mixed.group_ids = ["h", ""]  # "" is ungrouped
            self.assertEqual(
                s.batch_put_from_multi_buffers(["grp/m0", "grp/m1"], [[sa], [sa + block, sa + 2 * block]],
                                               [[block], [block, block]], mixed),
                [0, 0],
            )
            self.assertEqual(s.get("grp/m1"), value(301, block) + value(302, block))
            self.assertEqual(s.batch_upsert_from(["grp/k", "grp/u"], [sa + 3 * block] * 2, [block] * 2, cfg), [0, 0])
            self.assertEqual(s.get("grp/k"), value(303, block))
            self.assertEqual(
                s.batch_upsert_from_multi_buffers(["grp/k", "grp/w"], [[sa], [sa]], [[block], [block]], cfg), [0, 0]
            )
            self.assertEqual(s.get("grp/k"), value(300, block))
            # One id per key: any other count is INVALID_PARAMS for every key, nothing stored.
            for ids in (["g"], ["g", "g", "g"]):
                bad = ReplicateConfig()
                bad.group_ids = ids
                keys = ["grp/x", "grp/y"]
                self.assertEqual(s.batch_put_from(keys, [sa, sa], [block, block], bad), [-600, -600])
                self.assertEqual(s.batch_upsert_from(keys, [sa, sa], [block, block], bad), [-600, -600])
                self.assertEqual(
                    s.batch_put_from_multi_buffers(keys, [[sa], [sa]], [[block], [block]], bad), [-600, -600]
                )
                self.assertEqual(s.put_batch(keys, [b"x", b"y"], bad), -600)
                self.assertEqual(s.upsert_batch(keys, [b"x", b"y"], bad), -600)
                self.assertEqual(s.batch_is_exist(keys), [0, 0])
        finally:
            self.assertEqual(s.unregister_buffer(sa), 0)
        # The copying batch calls take them too.
        self.assertEqual(s.put_batch(["grp/c0", "grp/c1"], [b"c0", b"c1"], cfg), 0)
        self.assertEqual(s.upsert_batch(["grp/c0", "grp/c2"], [b"C0", b"c2"], cfg), 0)
        self.assertEqual(s.get_batch(["grp/c0", "grp/c1", "grp/c2"]), [b"C0", b"c1", b"c2"])
        one = ReplicateConfig()
        one.group_ids = ["solo"]
        self.assertEqual(s.put("grp/one", b"1", one), 0)
        self.assertEqual(mooncake_rs.error_name(s.put("grp/two", b"2", cfg)), "INVALID_PARAMS")

    def test_batch_remove_and_remove_with_force(self):
        s = self.store
        self.assertEqual(s.put_batch(["rm/a", "rm/b", "rm/c"], [b"a", b"b", b"c"]), 0)
        # TransferQueue's clear(): force, and OBJECT_NOT_FOUND (-704) for a missing key.
        self.assertEqual(s.batch_remove(["rm/a", "rm/zz"], force=True), [0, -704])
        self.assertEqual(len(s.get_replica_desc("rm/b")), 1)  # takes a read lease
        self.assertEqual(s.batch_remove(["rm/b"]), [-706])
        self.assertEqual(s.batch_remove(["rm/b"], False), [-706])
        self.assertEqual(s.batch_remove(["rm/b"], force=True), [0])
        self.assertEqual(s.batch_is_exist(["rm/a", "rm/b"]), [0, 0])
        self.assertEqual(s.get("rm/c"), b"c")
        self.assertEqual(mooncake_rs.error_name(s.remove("rm/c")), "OBJECT_HAS_LEASE")
        self.assertEqual(s.remove("rm/c", True), 0)
        self.assertEqual(s.remove("rm/c", force=True), -704)
        self.assertEqual(s.batch_remove([]), [])
        codes = s.batch_remove(["", "rm/none"], True)
        self.assertEqual([mooncake_rs.error_name(c) for c in codes], ["INVALID_KEY", "OBJECT_NOT_FOUND"])
        # A removed key can be written again at once (its old space waits for the lease).
        self.assertEqual(s.upsert("rm/b", b"again"), 0)
        self.assertEqual(s.get("rm/b"), b"again")

    def test_get_into_ranges_fragments_of_several_keys(self):
        s = self.store
        k1, k2 = bytes(range(40)), bytes(range(100, 140))
        self.assertEqual(s.put_batch(["rk1", "rk2"], [k1, k2]), 0)
        b0, b1 = ctypes.create_string_buffer(32), ctypes.create_string_buffer(32)
        p0, p1 = ctypes.addressof(b0), ctypes.addressof(b1)
        self.assertEqual(s.register_buffer(p0, 32), 0)
        self.assertEqual(s.register_buffer(p1, 32), 0)
        try:
            # Buffer 0: rk1[1:5] -> 0, rk1[30:33] -> 20, rk2[2:7] -> 8;
            # buffer 1: rk2[0:6] -> 4, rk1[10:14] -> 16.
            r = s.get_into_ranges(
                [p0, p1],
                [["rk1", "rk2"], ["rk2", "rk1"]],
                [[[0, 20], [8]], [[4], [16]]],
                [[[1, 30], [2]], [[0], [10]]],
                [[[4, 3], [5]], [[6], [4]]],
            )
            self.assertEqual(r, [[[4, 3], [5]], [[6], [4]]])
            self.assertEqual(b0.raw[0:4], k1[1:5])
            self.assertEqual(b0.raw[20:23], k1[30:33])
            self.assertEqual(b0.raw[8:13], k2[2:7])
            self.assertEqual(b1.raw[4:10], k2[0:6])
            self.assertEqual(b1.raw[16:20], k1[10:14])
            # Per fragment: a missing key, a range past the object, lists that disagree, a
            # fragment past the end of its buffer, an empty one; the good fragment beside them
            # still lands.
            r = s.get_into_ranges(
                [p0],
                [["nope", "rk1", "rk2", "rk1", "rk2"]],
                [[[0], [4], [0, 1], [24, 30], [5]]],
                [[[0], [38], [0], [0, 0], [40]]],
                [[[4], [4], [1], [8, 4], [0]]],
            )
            self.assertEqual(r, [[[-704], [-600], [-600, -600], [8, -600], [0]]])
            self.assertEqual(b0.raw[24:32], k1[0:8])
            # Top-level lists that disagree: every fragment fails, shaped like the keys.
            r = s.get_into_ranges([p0, p1], [["rk1"], ["rk2", "rk1"]], [[[0, 4]]], [[[0, 4]]], [[[4, 4]]])
            self.assertEqual(r, [[[-600, -600]], [[-600], [-600]]])
            # A buffer that is not registered.
            r = s.get_into_ranges([p0 + 4096 * 1024], [["rk1"]], [[[0]]], [[[0]]], [[[4]]])
            self.assertEqual(r, [[[-600]]])
        finally:
            self.assertEqual(s.unregister_buffer(p0), 0)
            self.assertEqual(s.unregister_buffer(p1), 0)

    def test_put_parts_and_hostname(self):
        s = self.store
        self.assertEqual(s.put_parts("parts/a", b"head-", bytearray(b"middle-"), b"tail"), 0)
        self.assertEqual(s.get("parts/a"), b"head-middle-tail")
        self.assertEqual(s.put_parts("parts/a", b"again"), 0)
        self.assertEqual(s.get("parts/a"), b"head-middle-tail")
        self.assertEqual(s.put_parts("parts/b", b"x", config=ReplicateConfig()), 0)
        host, port = s.get_hostname().rsplit(":", 1)
        self.assertEqual(host, "127.0.0.1")
        self.assertGreater(int(port), 0)

    def test_puts_take_any_buffer_and_get_buffer_returns_handles(self):
        s = self.store
        # LMCache: a metadata header, then the chunk as a memoryview of a ctypes array.
        chunk = (ctypes.c_ubyte * 100)(*range(100))
        self.assertEqual(s.put_parts("buf/lm", b"hdr", memoryview(chunk)), 0)
        handles = s.batch_get_buffer(["buf/lm", "buf/none"])
        self.assertEqual(len(handles), 2)
        h = handles[0]
        self.assertIsNone(handles[1])
        self.assertIsInstance(h, mooncake_rs.BufferHandle)
        self.assertEqual((len(h), h.size()), (103, 103))
        self.assertEqual(bytes(memoryview(h)[:3]), b"hdr")
        self.assertEqual(bytes(h), b"hdr" + bytes(range(100)))
        self.assertEqual(ctypes.string_at(h.ptr(), h.size()), bytes(h))
        self.assertIsNone(s.get_buffer("buf/none"))
        self.assertEqual(bytes(s.get_buffer("buf/lm")), bytes(h))
        # memoryview (also strided), array.array, ctypes arrays, bytearray.
        self.assertEqual(s.put("buf/mv", memoryview(b"x" * 10)), 0)
        self.assertEqual(s.put("buf/strided", memoryview(bytes(range(10)))[::2]), 0)
        ints = array.array("i", [1, -2, 3])
        self.assertEqual(s.put("buf/array", ints), 0)
        floats = (ctypes.c_float * 4)(0.5, 1.5, 2.5, 3.5)
        self.assertEqual(s.put_batch(["buf/floats", "buf/ba"], [floats, bytearray(b"ba")]), 0)
        self.assertEqual(s.get_batch(["buf/mv", "buf/strided", "buf/array", "buf/floats", "buf/ba"]),
                         [b"x" * 10, bytes([0, 2, 4, 6, 8]), ints.tobytes(), bytes(floats), b"ba"])
        # Objects without the buffer protocol are refused, nothing is stored.
        for bad in (5, "text", [1, 2]):
            with self.assertRaises(TypeError):
                s.put("buf/bad", bad)
            with self.assertRaises(TypeError):
                s.put_parts("buf/bad", b"ok", bad)
            with self.assertRaises(TypeError):
                s.put_batch(["buf/bad"], [bad])
        self.assertEqual(s.is_exist("buf/bad"), 0)

    def test_replicate_config_places_in_preferred_and_own_segments(self):
        master = Master()
        stores = []

        def store(segment):
            s = MooncakeDistributedStore()
            self.assertEqual(s.setup("127.0.0.1", "P2PHANDSHAKE", segment, MIB, "tcp", "", master.address), 0)
            stores.append(s)
            return s

        try:
            b, c, w = store(4 * MIB), store(4 * MIB), store(0)
            cfg = ReplicateConfig()
            self.assertEqual((cfg.preferred_segments, cfg.prefer_alloc_in_same_node), ([], False))
            cfg.preferred_segments = [b.get_hostname()]
            self.assertEqual(cfg.preferred_segments, [b.get_hostname()])
            text = str(cfg)
            self.assertIn("replica_num=1", text)
            self.assertIn(b.get_hostname(), text)
            self.assertEqual(repr(cfg), text)
            own = ReplicateConfig()
            own.prefer_alloc_in_same_node = True
            self.assertIn("prefer_alloc_in_same_node=True", str(own))
            data = bytes(64 << 10)
            for i in range(6):
                self.assertEqual(w.put(f"pref/b{i}", data, cfg), 0)
                self.assertEqual(c.put(f"pref/c{i}", data, own), 0)
            # Closing b unmounts its segment: exactly the objects placed there go with it.
            b.close()
            self.assertEqual([mooncake_rs.error_name(w.get_size(f"pref/b{i}")) for i in range(6)],
                             ["OBJECT_NOT_FOUND"] * 6)
            self.assertEqual([w.get_size(f"pref/c{i}") for i in range(6)], [len(data)] * 6)
            # Reads take (and ignore) the keyword: they prefer local replicas anyway.
            buf = ctypes.create_string_buffer(2 * len(data))
            ptr = ctypes.addressof(buf)
            self.assertEqual(w.register_buffer(ptr, len(buf)), 0)
            try:
                got = w.batch_get_into_multi_buffers(["pref/c0", "pref/c1"], [[ptr], [ptr + len(data)]],
                                                     [[len(data)], [len(data)]], prefer_alloc_in_same_node=True)
                self.assertEqual(got, [len(data)] * 2)
            finally:
                self.assertEqual(w.unregister_buffer(ptr), 0)
        finally:
            for s in stores:
                s.close()
            master.stop()

    def test_replica_descriptors_say_where_objects_live(self):
        # vLLM's tier logging asks for these; every replica here is in memory.
        s = self.store
        self.assertEqual(s.put("desc/a", b"a" * 700), 0)
        self.assertEqual(s.put("desc/b", b"b" * 50), 0)
        got = s.batch_get_replica_desc(["desc/a", "desc/b", "desc/none"])
        self.assertEqual(sorted(got), ["desc/a", "desc/b", "desc/none"])
        self.assertEqual(got["desc/none"], [])
        for key, size in (("desc/a", 700), ("desc/b", 50)):
            (d,) = got[key]
            self.assertTrue(d.is_memory_replica())
            self.assertFalse(d.is_disk_replica() or d.is_local_disk_replica())
            self.assertEqual(d.size, size)
            # In the holder's pool (this store contributes none).
            self.assertTrue(d.transport_endpoint.startswith("127.0.0.1:"), d)
            self.assertNotEqual(d.transport_endpoint, s.get_hostname())
            self.assertGreater(d.buffer_address, 0)
        (one,) = s.get_replica_desc("desc/a")
        self.assertEqual((one.buffer_address, one.size), (got["desc/a"][0].buffer_address, 700))
        self.assertEqual(s.get_replica_desc("desc/none"), [])

    def test_sizes_and_remove_all(self):
        s = self.store
        self.assertEqual(s.put("sz/a", b"x" * 300), 0)
        self.assertEqual(s.get_size("sz/a"), 300)
        self.assertEqual(mooncake_rs.error_name(s.get_size("sz/none")), "OBJECT_NOT_FOUND")
        # Its own master: removing everything must not disturb the other tests.
        master = Master()
        holder = Store(master.address, segment_size=8 * MIB, protocol="tcp")
        worker = Store(master.address, segment_size=0, protocol="tcp")
        try:
            keys = [f"all/{i}" for i in range(4)]
            self.assertEqual(worker.batch_put(keys, [value(i, 10 * (i + 1)) for i in range(4)]), [0] * 4)
            self.assertEqual(worker.get_size("all/2"), 30)
            sizes = worker.batch_get_size(["all/0", "all/9", "all/3"])
            self.assertEqual(sizes[0], 10)
            self.assertEqual(mooncake_rs.error_name(sizes[1]), "OBJECT_NOT_FOUND")
            self.assertEqual(sizes[2], 40)
            # all/0, all/2 and all/3 are leased by those lookups: only all/1 goes without force.
            compat = MooncakeDistributedStore()
            self.assertEqual(compat.setup("127.0.0.1", "P2PHANDSHAKE", 0, MIB, "tcp", "", master.address), 0)
            self.assertEqual(compat.remove_by_regex("^all/[01]$"), 1)
            self.assertEqual(mooncake_rs.error_name(compat.remove_by_regex("(")), "INVALID_PARAMS")
            self.assertEqual(compat.remove_all(), 0)
            compat.close()
            self.assertEqual(worker.remove_by_regex("^all/[23]$", force=True), 2)
            with self.assertRaises(StoreError) as e:
                worker.remove_by_regex("[")
            self.assertEqual(e.exception.args[1], "INVALID_PARAMS")
            self.assertEqual(worker.remove_all(force=True), 1)
            self.assertEqual(worker.batch_exists(keys), [0] * 4)
        finally:
            worker.close()
            holder.close()
            master.stop()

    def test_setup_takes_mooncakes_engine_argument_and_keyword_settings(self):
        addr = self.master.address
        # SGLang's call: 8 positional arguments, the transfer engine usually None.
        s = MooncakeDistributedStore()
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            self.assertEqual(s.setup("127.0.0.1", "P2PHANDSHAKE", 0, MIB, "tcp", "", addr, None), 0)
        self.assertEqual(w, [])
        self.assertEqual(s.put("setup/plain", b"v"), 0)
        s.close()
        # A shared engine: its session id's port is taken; this store listens elsewhere.
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        s = MooncakeDistributedStore()
        try:
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                rc = s.setup(f"127.0.0.1:{port}", "P2PHANDSHAKE", 0, MIB, "tcp", "", addr, engine=object())
            self.assertEqual(rc, 0)
            self.assertTrue(any("external transfer engine" in str(x.message) for x in w))
            host, own = s.get_hostname().rsplit(":", 1)
            self.assertEqual(host, "127.0.0.1")
            self.assertNotEqual(int(own), port)
            self.assertEqual(s.put("setup/engine", b"v"), 0)
        finally:
            s.close()
            taken.close()
        # The client HTTP server serves this client's metrics and health; the offload path is
        # accepted with a warning.
        http_port = free_port()
        s = MooncakeDistributedStore()
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            rc = s.setup("127.0.0.1", "P2PHANDSHAKE", 0, MIB, "tcp", "", addr, None,
                         enable_client_http_server=True, client_http_port=http_port,
                         ssd_offload_path="/nonexistent", enable_ssd_offload=False, tenant_id="default")
        self.assertEqual(rc, 0)
        messages = [str(x.message) for x in w]
        self.assertEqual(len(messages), 1, messages)
        self.assertIn("ssd_offload_path", messages[0])
        self.assertEqual(s.put("setup/http", b"v"), 0)
        base = f"http://127.0.0.1:{http_port}"
        with urllib.request.urlopen(base + "/health", timeout=10) as r:
            self.assertEqual(r.read(), b"OK")
        with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
            self.assertIn(b"mooncake_client_ops_total", r.read())
        s.close()
        # Settings that would change what the store does, and unknown ones: TypeError naming them.
        for kwargs, name in (({"enable_ssd_offload": True}, "enable_ssd_offload"),
                             ({"tenant_id": "team-a"}, "tenant_id"),
                             ({"bogus_option": 1}, "bogus_option")):
            with self.assertRaises(TypeError) as e:
                MooncakeDistributedStore().setup("127.0.0.1", "P2PHANDSHAKE", 0, MIB, "tcp", "", addr, None, **kwargs)
            self.assertIn(name, str(e.exception))
        # SGLang's loop: on a TypeError it drops the settings the message names and retries.
        setup_kwargs = {"enable_client_http_server": True, "client_http_port": free_port(),
                        "enable_ssd_offload": True, "ssd_offload_path": "/ssd"}
        s = MooncakeDistributedStore()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            while True:
                try:
                    rc = s.setup("127.0.0.1", "P2PHANDSHAKE", 0, MIB, "tcp", "", addr, None, **setup_kwargs)
                    break
                except TypeError as e:
                    named = [k for k in setup_kwargs if k in str(e)]
                    self.assertTrue(named, str(e))
                    for k in named:
                        setup_kwargs.pop(k)
        self.assertEqual(rc, 0)
        self.assertEqual(sorted(setup_kwargs), ["client_http_port", "enable_client_http_server", "ssd_offload_path"])
        s.close()

    def test_a_process_that_exits_without_close_unmounts_its_segment(self):
        # The child's stores are never collected (a leaked reference, as when a worker exits
        # with its store still referenced): only the atexit hook can unmount their segments.
        master = Master()
        try:
            child = f"""
import ctypes, mooncake_rs
s = mooncake_rs.MooncakeDistributedStore()
assert s.setup("127.0.0.1", "P2PHANDSHAKE", 4 << 20, 1 << 20, "tcp", "", "{master.address}") == 0
assert s.put("exit/compat", b"c" * 1000) == 0
n = mooncake_rs.Store("{master.address}", segment_size=4 << 20, protocol="tcp")
n.put("exit/native", b"n" * 1000)
for o in (s, n):
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(o))
"""
            done = run_python(child)
            self.assertEqual(done.returncode, 0, done.stderr.decode())
            probe = MooncakeDistributedStore()
            self.assertEqual(probe.setup("127.0.0.1", "P2PHANDSHAKE", 0, MIB, "tcp", "", master.address), 0)
            try:
                # Unmounting dropped the segments' objects, and no segment is left to place in.
                self.assertEqual(mooncake_rs.error_name(probe.get_size("exit/compat")), "OBJECT_NOT_FOUND")
                self.assertEqual(mooncake_rs.error_name(probe.get_size("exit/native")), "OBJECT_NOT_FOUND")
                self.assertEqual(mooncake_rs.error_name(probe.put("exit/after", b"x")), "NO_AVAILABLE_HANDLE")
            finally:
                probe.close()
        finally:
            master.stop()

    def test_a_forked_child_leaves_its_parents_store_alone_at_exit(self):
        # The child inherits the parent's store (and its registration) but not its threads:
        # neither its atexit hook nor its interpreter freeing the store at exit may hang on
        # it or unmount the parent's segment.
        master = Master()
        try:
            script = f"""
import os, sys, time, mooncake_rs
s = mooncake_rs.MooncakeDistributedStore()
assert s.setup("127.0.0.1", "P2PHANDSHAKE", 4 << 20, 1 << 20, "tcp", "", "{master.address}") == 0
assert s.put("fork/key", b"k" * 1000) == 0
pid = os.fork()
if pid == 0:
    sys.exit(0)
for _ in range(300):
    if os.waitpid(pid, os.WNOHANG)[0]:
        break
    time.sleep(0.1)
else:
    os.kill(pid, 9)
    print("child hung")
print(s.get_size("fork/key"))
s.close()
"""
            out = run_python(script)
            self.assertEqual(out.returncode, 0, out.stderr.decode())
            self.assertEqual(out.stdout.decode().split(), ["1000"])
        finally:
            master.stop()

    def test_setup_dummy_says_to_run_mooncake_client(self):
        # SGLang's standalone_storage calls setup_dummy(mem_pool_size, local_buffer_size,
        # client_server_address); any call shape gets the same answer.
        calls = [((1, 1, "x"), {}), ((), {"mem_pool_size": 1, "local_buffer_size": 1, "server_address": "x"})]
        for args, kwargs in calls:
            with self.assertRaises(NotImplementedError) as raised:
                self.store.setup_dummy(*args, **kwargs)
            self.assertIn("run a `mooncake-client` process", str(raised.exception))
            self.assertIn("global_segment_size=0", str(raised.exception))
        # The store it was called on is untouched.
        self.assertEqual(self.store.put("dummy/after", b"d"), 0)
        self.assertEqual(self.store.get("dummy/after"), b"d")

    def test_setup_first_and_failed_setup(self):
        fresh = MooncakeDistributedStore()
        with self.assertRaises(RuntimeError):
            fresh.put("k", b"v")
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            self.assertEqual(fresh.setup("127.0.0.1", "", 0, MIB, "tcp", "", "127.0.0.1:1"), -1)
        self.assertTrue(any("setup failed" in str(x.message) for x in w))


class LoggingTest(unittest.TestCase):
    # A peer that sends a bad hello to a client's transfer port: the client closes that
    # connection and logs a warning (the child waits for the close, which comes after it).
    BAD_PEER = """
import socket, mooncake_rs
m = mooncake_rs.Master()
s = mooncake_rs.MooncakeDistributedStore()
assert s.setup("127.0.0.1", "P2PHANDSHAKE", 0, 1 << 20, "tcp", "", m.address) == 0
host, port = s.get_hostname().rsplit(":", 1)
c = socket.create_connection((host, int(port)))
c.sendall(b"NOTMCTE!" * 8)  # longer than any hello
try:
    assert c.recv(1) == b""
except ConnectionResetError:  # closed with bytes of ours unread
    pass
s.close()
m.stop()
"""
    WARNING = "closed connection"

    def stderr_of(self, **env_vars):
        out = run_python(self.BAD_PEER, **env_vars)
        self.assertEqual(out.returncode, 0, out.stderr.decode())
        return out.stderr.decode()

    def test_warnings_reach_stderr_unless_the_level_says_otherwise(self):
        default = self.stderr_of()
        self.assertIn(self.WARNING, default)
        self.assertIn("bad magic", default)
        self.assertNotIn("master serving", default)
        # INFO adds the info lines (the embedded master's start among them).
        info = self.stderr_of(MC_LOG_LEVEL="INFO")
        self.assertIn("master serving", info)
        self.assertIn(self.WARNING, info)
        self.assertIn(self.WARNING, self.stderr_of(MC_LOG_LEVEL="WARNING"))
        self.assertNotIn(self.WARNING, self.stderr_of(MC_LOG_LEVEL="ERROR"))
        # RUST_LOG, when set, wins over MC_LOG_LEVEL.
        self.assertIn(self.WARNING, self.stderr_of(MC_LOG_LEVEL="ERROR", RUST_LOG="transfer_engine=warn"))
        self.assertNotIn(self.WARNING, self.stderr_of(RUST_LOG="off"))
        # An unknown level is said, and the default applies.
        unknown = self.stderr_of(MC_LOG_LEVEL="LOUD")
        self.assertIn("MC_LOG_LEVEL not understood", unknown)
        self.assertIn(self.WARNING, unknown)


def cuda_available():
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


@unittest.skipUnless(cuda_available(), "needs PyTorch with a CUDA device")
class GpuTest(unittest.TestCase):
    def test_kv_blocks_in_gpu_tensors_round_trip_through_the_pool(self):
        import torch

        master = Master()
        holder = Store(master.address, segment_size=256 * MIB, protocol="tcp")
        worker = Store(master.address, segment_size=0, protocol="tcp")
        # 32 layers x 8 blocks of 16 tokens x 8 heads x 128 dims, bf16: 32 KiB per block.
        layers, blocks = 32, 8
        kv = torch.randn(layers, blocks, 16, 8, 128, device="cuda", dtype=torch.bfloat16)
        out = torch.zeros_like(kv)
        torch.cuda.synchronize()
        nbytes = kv.numel() * kv.element_size()
        worker.register_buffer(kv.data_ptr(), nbytes)
        worker.register_buffer(out.data_ptr(), nbytes)
        block = kv[0, 0].numel() * kv.element_size()
        keys, src, dst = [], [], []
        for l in range(layers):
            for b in range(blocks):
                keys.append(f"req7/layer{l}/block{b}")
                src.append(kv[l, b].data_ptr())
                dst.append(out[l, b].data_ptr())
        self.assertEqual(worker.batch_put_from(keys, src, [block] * len(keys)), [block] * len(keys))
        self.assertEqual(worker.batch_get_into(keys, dst, [block] * len(keys)), [block] * len(keys))
        torch.cuda.synchronize()
        self.assertTrue(torch.equal(kv, out))
        # The holder's copying API sees the GPU bytes.
        self.assertEqual(holder.get(keys[9]), kv[1, 1].cpu().view(torch.uint8).numpy().tobytes())
        worker.unregister_buffer(kv.data_ptr())
        worker.unregister_buffer(out.data_ptr())
        worker.close()
        holder.close()
        master.stop()

    def test_layerwise_blocks_through_the_mooncake_api(self):
        """vLLM's layout: one KV tensor per layer; one object per block gathers that block
        from every layer (batch_put_from_multi_buffers), scattered back likewise."""
        import torch

        master = Master()
        holder = Store(master.address, segment_size=256 * MIB, protocol="tcp")
        store = MooncakeDistributedStore()
        self.assertEqual(store.setup("127.0.0.1", "P2PHANDSHAKE", 0, 64 * MIB, "tcp", "", master.address), 0)
        layers, blocks = 16, 12
        src = [torch.randn(2, blocks, 16, 4, 64, device="cuda", dtype=torch.float16) for _ in range(layers)]
        dst = [torch.zeros_like(t) for t in src]
        torch.cuda.synchronize()
        for t in src + dst:
            self.assertEqual(store.register_buffer(t.data_ptr(), t.numel() * t.element_size()), 0)
        # Per layer and block: the K and V halves are two ranges.
        part = src[0][0, 0].numel() * src[0].element_size()
        keys = [f"seq3/block{b}" for b in range(blocks)]
        ptrs = [[t[kv, b].data_ptr() for t in src for kv in (0, 1)] for b in range(blocks)]
        back = [[t[kv, b].data_ptr() for t in dst for kv in (0, 1)] for b in range(blocks)]
        sizes = [[part] * (2 * layers) for _ in range(blocks)]
        self.assertEqual(store.batch_put_from_multi_buffers(keys, ptrs, sizes), [0] * blocks)
        self.assertEqual(store.batch_get_into_multi_buffers(keys, back, sizes), [2 * layers * part] * blocks)
        torch.cuda.synchronize()
        for a, b in zip(src, dst):
            self.assertTrue(torch.equal(a, b))
        for t in src + dst:
            self.assertEqual(store.unregister_buffer(t.data_ptr()), 0)
        store.close()
        holder.close()
        master.stop()


if __name__ == "__main__":
    unittest.main()
