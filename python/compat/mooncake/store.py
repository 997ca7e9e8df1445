"""`mooncake.store`: Mooncake's store API as mooncake-rs implements it.

The names are mooncake-rs's own classes (`MooncakeDistributedStore is
mooncake_rs.MooncakeDistributedStore`), so there is one implementation and one set of docs.
`MooncakeHostMemAllocator` is not here: SGLang's standalone-storage mode, which needs it and
`setup_dummy`, is not supported; run a `mooncake-client` to hold the pool and call
`setup(..., global_segment_size=0, ...)` instead.
"""

try:
    from mooncake_rs import (
        BufferHandle,
        MooncakeDistributedStore,
        ReplicaDescriptor,
        ReplicateConfig,
    )
except ImportError as e:
    raise ImportError(
        "mooncake.store (mooncake-rs-compat) re-exports mooncake-rs, which could not be "
        "imported: install the mooncake-rs wheel (`pip install ./python` in mooncake-rs) "
        "first (%s)" % e,
        name=__name__,
    ) from e

__all__ = ["BufferHandle", "MooncakeDistributedStore", "ReplicaDescriptor", "ReplicateConfig"]
