"""Changing a table's sparse optimizer before its first push.

A :class:`~shardemb.ShardedEmbedding` created without ``optimizer=`` takes the model's
optimizer for its table at the first applied step; its store was created before that
optimizer was known, so the shards switch then. Only a table that has applied no push may
switch (its slots start from the new optimizer's initial values).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from shardemb.core.optimizers import get_optimizer
from shardemb.errors import InvalidConfigError
from shardemb.shard.shard import _tf_device
from shardemb.shard.storage import make_storage

__all__ = ["pushes_of", "set_optimizer"]


def _switch(shard, optimizer) -> None:
    cfg = dataclasses.replace(shard.config, optimizer=optimizer)
    kind, device = cfg.storage, _tf_device(cfg.device)
    slots = {}
    for name, (width, init) in optimizer.slot_specs(cfg.dim).items():
        storage = make_storage(kind, shard.num_rows, width, cfg.slot_dtype, device)
        storage.write(0, np.full((shard.num_rows, width), init, cfg.slot_dtype))
        slots[name] = storage
    shard.config, shard.slots = cfg, slots


def pushes_of(shard) -> int:
    """The number of pushes ``shard`` applied."""
    return int(shard.pushes)


def set_optimizer(store, optimizer: object) -> None:
    """Give ``store``'s shards the sparse ``optimizer``; raises
    :class:`InvalidConfigError` (and changes nothing) once any shard applied a push."""
    optimizer = get_optimizer(optimizer)
    if any(store.shard_call(pushes_of)):
        raise InvalidConfigError(
            f"Table {store.config.name!r} has applied pushes; its optimizer "
            f"({store.config.optimizer.name!r}) can no longer change. Received: "
            f"optimizer={optimizer.get_config()!r}"
        )
    store.flush()
    store.shard_call(_switch, optimizer)
    store.config = dataclasses.replace(store.config, optimizer=optimizer)
