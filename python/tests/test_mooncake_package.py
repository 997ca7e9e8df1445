"""The mooncake-rs-compat wheel (python/compat): Mooncake's `mooncake.store` import path,
installed from the wheel `scripts/python-test` builds into this directory, as connectors use it.

Each test installs the wheel (a pure wheel installs by unpacking it into a site directory)
and runs a fresh interpreter with `-S` (no site-packages, so no other Mooncake or mooncake_rs
is found) whose path is that directory and the one holding this mooncake_rs.
"""

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import unittest
import zipfile

import mooncake_rs

HERE = os.path.dirname(os.path.abspath(__file__))
RS_DIR = os.path.dirname(os.path.abspath(mooncake_rs.__file__))


def compat_wheel():
    """The one mooncake-rs-compat wheel beside this file."""
    found = glob.glob(os.path.join(HERE, "mooncake_rs_compat-*-py3-none-any.whl"))
    assert len(found) == 1, "expected one mooncake-rs-compat wheel in %s, found %s" % (HERE, found)
    return found[0]


def install(site):
    """Installs the wheel into the directory `site`."""
    with zipfile.ZipFile(compat_wheel()) as whl:
        whl.extractall(site)


def run(cwd, paths, script):
    """Runs `script` in `cwd` (a directory of no modules) with `-S` and `paths` as its module
    path; (returncode, stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RUST_LOG", "MC_LOG_LEVEL")}
    env["PYTHONPATH"] = os.pathsep.join(paths)
    done = subprocess.run(
        [sys.executable, "-S", "-c", textwrap.dedent(script)],
        env=env,
        capture_output=True,
        timeout=60,
        cwd=cwd,
    )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


class MooncakePackageTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="mooncake-compat-")
        self.site = os.path.join(self.tmp, "site")
        install(self.site)

    def tearDown(self):
        shutil.rmtree(self.tmp)

    def test_connectors_import_mooncake_store_and_get_mooncake_rs_classes(self):
        rc, out, err = run(self.tmp, [self.site, RS_DIR], """
            import json, mooncake_rs, mooncake.store
            from mooncake.store import MooncakeDistributedStore, ReplicateConfig
            from mooncake.store import ReplicaDescriptor, BufferHandle
            print(json.dumps({
                "same": [MooncakeDistributedStore is mooncake_rs.MooncakeDistributedStore,
                         ReplicateConfig is mooncake_rs.ReplicateConfig,
                         ReplicaDescriptor is mooncake_rs.ReplicaDescriptor,
                         BufferHandle is mooncake_rs.BufferHandle],
                "file": mooncake.store.__file__,
                "all": sorted(mooncake.store.__all__),
                "engine_allocator": [hasattr(mooncake.store, "MooncakeHostMemAllocator"),
                                     hasattr(mooncake.store, "TransferEngine")],
            }))
        """)
        self.assertEqual(rc, 0, err)
        got = json.loads(out)
        self.assertEqual(got["same"], [True] * 4)
        self.assertEqual(got["file"], os.path.join(self.site, "mooncake", "store.py"))
        self.assertEqual(
            got["all"], ["BufferHandle", "MooncakeDistributedStore", "ReplicaDescriptor", "ReplicateConfig"]
        )
        # Not provided, so code that needs Mooncake's engine or allocator fails at import.
        self.assertEqual(got["engine_allocator"], [False, False])
        rc, _, err = run(self.tmp, [self.site, RS_DIR], "import mooncake.engine")
        self.assertNotEqual(rc, 0)
        self.assertIn("No module named 'mooncake.engine'", err)

    def test_setup_put_get_round_trip_through_mooncake_store(self):
        master = mooncake_rs.Master()
        try:
            rc, out, err = run(self.tmp, [self.site, RS_DIR], """
                import json
                from mooncake.store import MooncakeDistributedStore, ReplicateConfig
                store = MooncakeDistributedStore()
                setup = store.setup("127.0.0.1", "P2PHANDSHAKE", 16 << 20, 16 << 20, "tcp", "", %r)
                config = ReplicateConfig()
                config.replica_num = 1
                value = bytes(range(256)) * 64
                put = store.put("compat/key", value, config)
                got = store.get("compat/key")
                print(json.dumps({"setup": setup, "put": put, "same": got == value,
                                  "len": len(got), "missing": len(store.get("compat/none"))}))
                store.close()
            """ % master.address)
        finally:
            master.stop()
        self.assertEqual(rc, 0, err)
        self.assertEqual(
            json.loads(out), {"setup": 0, "put": 0, "same": True, "len": 16384, "missing": 0}
        )

    def test_setup_dummy_says_to_run_mooncake_client(self):
        rc, out, err = run(self.tmp, [self.site, RS_DIR], """
            from mooncake.store import MooncakeDistributedStore
            try:
                MooncakeDistributedStore().setup_dummy(1 << 30, 16 << 20, "127.0.0.1:50052")
            except NotImplementedError as e:
                print(e)
        """)
        self.assertEqual(rc, 0, err)
        self.assertIn("mooncake-client", out)
        self.assertIn("global_segment_size=0", out)

    def test_refuses_a_directory_shared_with_mooncakes_own_wheel(self):
        # pip installs two wheels owning `mooncake/` into one directory: Mooncake's compiled
        # engine module lies beside this package's files.
        open(os.path.join(self.site, "mooncake", "engine.so"), "wb").close()
        rc, _, err = run(self.tmp, [self.site, RS_DIR], "from mooncake.store import MooncakeDistributedStore")
        self.assertNotEqual(rc, 0)
        self.assertIn("ImportError", err)
        self.assertIn("mooncake-transfer-engine", err)
        self.assertIn("engine.so", err)

    def test_warns_when_it_shadows_mooncake_installed_further_down_the_path(self):
        other = os.path.join(self.tmp, "other-site", "mooncake")
        os.makedirs(other)
        open(os.path.join(other, "__init__.py"), "w").close()
        open(os.path.join(other, "store.so"), "wb").close()
        rc, out, err = run(self.tmp, [self.site, RS_DIR, os.path.dirname(other)], """
            import mooncake_rs
            from mooncake.store import MooncakeDistributedStore
            print(MooncakeDistributedStore is mooncake_rs.MooncakeDistributedStore)
        """)
        self.assertEqual(rc, 0, err)
        self.assertEqual(out.split(), ["True"])
        self.assertIn("RuntimeWarning", err)
        self.assertIn("shadows Mooncake installed at " + other, err)

    def test_without_mooncake_rs_the_import_error_says_what_to_install(self):
        rc, _, err = run(self.tmp, [self.site], "import mooncake.store")
        self.assertNotEqual(rc, 0)
        self.assertIn("install the mooncake-rs wheel", err)
        self.assertIn("No module named 'mooncake_rs'", err)

    def test_wheel_record_lists_every_file_with_its_hash(self):
        # What pip reads to install and uninstall the wheel.
        import base64
        import hashlib

        with zipfile.ZipFile(compat_wheel()) as whl:
            names = sorted(whl.namelist())
            info = [n for n in names if n.endswith(".dist-info/RECORD")]
            self.assertEqual(len(info), 1, names)
            rows = [line.split(",") for line in whl.read(info[0]).decode().splitlines()]
            listed = {}
            for path, digest, size in rows:
                listed[path] = (digest, size)
            self.assertEqual(sorted(listed), names)
            for path in names:
                if path == info[0]:
                    self.assertEqual(listed[path], ("", ""))
                    continue
                data = whl.read(path)
                want = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
                self.assertEqual(listed[path], ("sha256=" + want.decode(), str(len(data))), path)
            metadata = whl.read(info[0].replace("RECORD", "METADATA")).decode()
        self.assertIn("mooncake/store.py", names)
        self.assertIn("mooncake/__init__.py", names)
        self.assertIn("\nName: mooncake-rs-compat\n", metadata)
        self.assertIn("\nRequires-Dist: mooncake-rs", metadata)


if __name__ == "__main__":
    unittest.main()
