"""Mooncake's `mooncake` package name, backed by mooncake-rs (the mooncake-rs-compat wheel).

Connectors written for Mooncake (vLLM, SGLang, LMCache, TransferQueue) import
`from mooncake.store import MooncakeDistributedStore, ReplicateConfig`; this package makes
that import give mooncake-rs's classes, so they run on mooncake-rs unchanged. It holds
`mooncake.store` only: no transfer engine (`mooncake.engine`), no `MooncakeHostMemAllocator`,
so code that needs those fails at import instead of running on something else.

Mooncake's own wheel (`mooncake-transfer-engine`) owns the same package name. This package
refuses to load when pip has merged the two into one directory (which one `mooncake.store`
would be depends on install order and file types, and uninstalling either breaks the
other), and warns when a Mooncake install elsewhere on `sys.path` is shadowed by it.
"""

import importlib.machinery
import os
import sys
import warnings

# Mooncake's compiled modules (`mooncake/engine.so`, `mooncake/store.so`); this package has
# none, so either one beside or instead of it means Mooncake's wheel is installed there.
_MOONCAKE_EXTENSIONS = ("engine", "store")


def _mooncake_extensions_in(directory):
    """Names of Mooncake's compiled modules in `directory`, sorted (none if unreadable)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    suffixes = importlib.machinery.EXTENSION_SUFFIXES
    return sorted(
        n for n in names for stem in _MOONCAKE_EXTENSIONS for s in suffixes if n == stem + s
    )


def _check_no_real_mooncake():
    here = os.path.dirname(os.path.abspath(__file__))
    beside = _mooncake_extensions_in(here)
    if beside:
        raise ImportError(
            "mooncake-rs-compat shares the directory %s with Mooncake's own wheel "
            "(mooncake-transfer-engine: %s): `mooncake.store` would be Mooncake's, not "
            "mooncake-rs's. Keep one of them: `pip uninstall mooncake-transfer-engine "
            "mooncake-rs-compat`, then reinstall the one you want." % (here, ", ".join(beside)),
            name=__name__,
            path=here,
        )
    for entry in sys.path:
        other = os.path.join(os.path.abspath(entry or os.curdir), "mooncake")
        if os.path.realpath(other) == os.path.realpath(here):
            continue
        found = _mooncake_extensions_in(other)
        if found:
            warnings.warn(
                "mooncake-rs-compat (%s) shadows Mooncake installed at %s (%s): "
                "`mooncake.store` is mooncake-rs. Uninstall one of them to silence this."
                % (here, other, ", ".join(found)),
                RuntimeWarning,
                stacklevel=3,
            )


_check_no_real_mooncake()
