"""The PEP 517 build backend of mooncake-rs-compat: writes its wheel and sdist with the
standard library alone.

Why not setuptools or flit: the package is two pure-Python files, and it must build where
nothing can be downloaded (CI, air-gapped inference clusters) and where the interpreter has
no build tools at all (Debian's `python3` ships neither pip nor setuptools; setuptools
before 70.1 also needs `wheel`). `pip install python/compat` and `pip wheel python/compat`
use it through `backend-path`; `scripts/python-test` calls `build_wheel` directly, so the
tests install exactly the wheel users get.

The distribution's metadata lives here (the constants below), not in pyproject.toml's
`[project]` table, because reading TOML needs `tomllib` (Python 3.11+).
"""

import base64
import gzip
import hashlib
import io
import os
import tarfile
import zipfile

NAME = "mooncake-rs-compat"
VERSION = "0.1.0"
SUMMARY = "Mooncake's `mooncake.store` import path, backed by mooncake-rs"
REQUIRES_PYTHON = ">=3.8"
REQUIRES_DIST = ["mooncake-rs>=0.1.0"]
LICENSE = "Apache-2.0"

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE = "mooncake"
# File names use the normalized name (PEP 427 / PEP 625).
DIST = NAME.replace("-", "_")
TAG = "py3-none-any"
# Archive timestamps are fixed so that the same sources give the same bytes.
EPOCH = (1980, 1, 1, 0, 0, 0)


def _read(path):
    with open(os.path.join(HERE, path), "rb") as f:
        return f.read()


def _package_files():
    """(path in the archive, bytes) of each module of the package, in name order."""
    root = os.path.join(HERE, PACKAGE)
    names = sorted(n for n in os.listdir(root) if n.endswith(".py"))
    return [(PACKAGE + "/" + n, _read(os.path.join(PACKAGE, n))) for n in names]


def _metadata():
    lines = [
        "Metadata-Version: 2.1",
        "Name: " + NAME,
        "Version: " + VERSION,
        "Summary: " + SUMMARY,
        "License: " + LICENSE,
        "Requires-Python: " + REQUIRES_PYTHON,
    ]
    lines += ["Requires-Dist: " + d for d in REQUIRES_DIST]
    lines.append("Description-Content-Type: text/markdown")
    return ("\n".join(lines) + "\n\n").encode() + _read("README.md")


def _record_line(path, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return "%s,sha256=%s,%d" % (path, digest, len(data))


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    """Writes the wheel into `wheel_directory` and returns its file name."""
    info = "%s-%s.dist-info" % (DIST, VERSION)
    wheel = "Wheel-Version: 1.0\nGenerator: %s build_backend\nRoot-Is-Purelib: true\nTag: %s\n" % (
        NAME,
        TAG,
    )
    files = _package_files() + [
        (info + "/METADATA", _metadata()),
        (info + "/WHEEL", wheel.encode()),
    ]
    record = [_record_line(p, d) for p, d in files] + [info + "/RECORD,,"]
    files.append((info + "/RECORD", ("\n".join(record) + "\n").encode()))
    name = "%s-%s-%s.whl" % (DIST, VERSION, TAG)
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w", zipfile.ZIP_DEFLATED) as z:
        for path, data in files:
            entry = zipfile.ZipInfo(path, EPOCH)
            entry.external_attr = 0o644 << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(entry, data)
    return name


def build_sdist(sdist_directory, config_settings=None):
    """Writes the source archive into `sdist_directory` and returns its file name."""
    base = "%s-%s" % (DIST, VERSION)
    sources = [(p, _read(p)) for p in ("pyproject.toml", "build_backend.py", "README.md")]
    files = sources + _package_files() + [("PKG-INFO", _metadata())]
    name = base + ".tar.gz"
    with open(os.path.join(sdist_directory, name), "wb") as raw, gzip.GzipFile(
        fileobj=raw, mode="wb", mtime=0
    ) as gz, tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as t:
        for path, data in files:
            entry = tarfile.TarInfo(base + "/" + path)
            entry.size = len(data)
            entry.mode = 0o644
            t.addfile(entry, io.BytesIO(data))
    return name


def get_requires_for_build_wheel(config_settings=None):
    return []


def get_requires_for_build_sdist(config_settings=None):
    return []


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 2:
        sys.exit("usage: build_backend.py OUT_DIR   (writes the wheel into OUT_DIR)")
    print(os.path.join(sys.argv[1], build_wheel(sys.argv[1])))
