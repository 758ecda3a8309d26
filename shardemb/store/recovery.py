"""Recovery of a table whose shards died: restart them and reload their rows.

The store layer knows no checkpoint format: it is handed a ``reload(index, step)``
callback that refills one restarted shard and returns the checkpoint's step.
"""

from __future__ import annotations

from shardemb.errors import ShardRestartedError, ShardUnavailableError

__all__ = ["recover"]


def recover(store, err: ShardUnavailableError, reload) -> None:
    """Find the dead shards of ``store``; restart them and ``reload`` each from the last
    committed checkpoint (raising :class:`ShardRestartedError`), or raise
    :class:`ShardUnavailableError` naming them when there is no checkpoint. Always raises.
    """
    backend, handles = store._backend, store._handles
    alive = backend.alive(handles)
    dead = [i for i, ok in enumerate(alive) if not ok]
    if not dead:
        raise err
    # Pushes to dead shards are lost; those to live shards are still applied by them.
    store._pending.drop_shards(dead)
    name = store.config.name
    if store.last_checkpoint is None:
        raise ShardUnavailableError(
            f"Shard(s) {dead} of table {name!r} died and there is no checkpoint to "
            "restart them from (save one with store.save or a CheckpointManager). "
            f"Cause: {err}"
        ) from err
    # The restarted shard keeps the table's step (all shards count every push, and a
    # save needs them to agree); its rows and slots go back to the checkpoint's.
    live = next(i for i, ok in enumerate(alive) if ok) if len(dead) < len(alive) else None
    table_step = (
        store._get([backend.submit(handles[live], "info")])[0]["step"] if live is not None else None
    )
    step = None
    for i in dead:
        handles[i] = backend.restart(store.config, i, store._resources, store._detached)
        step = reload(i, table_step)
    store._reset_channel()  # probe again: a restarted shard may run elsewhere
    raise ShardRestartedError(
        f"Shard(s) {dead} of table {name!r} died and were restarted from the checkpoint "
        f"{store.last_checkpoint!r} (step {step}). Pushes applied to them since that "
        "checkpoint were lost; the other shards are untouched."
    ) from err
