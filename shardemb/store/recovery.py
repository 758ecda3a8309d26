"""Recovery of a table whose shards died: one replacement per shard, loaded once.

Several processes may use one table, and each notices a dead shard by itself. The shard
actor's name is the lock: the first process to start a replacement under it wins, the
others find that replacement (another actor under the name) and use it, and no process
ever kills a shard that answers. A replacement holds no rows until a checkpoint is read
into it and serves nothing before (``ShardNotLoadedError``); every process that noticed
asks for the load, and the shard, which runs one call at a time, does the first and skips
the others (``replace=False``), so a push applied after the load is never undone.

The checkpoint is the table's newest committed one: every save tells every shard (its
``checkpoint`` in ``info()``), so a process that saved nothing still finds it; only when no
live shard knows one is this process's own ``last_checkpoint`` used.

The store layer knows no checkpoint format: it is handed a ``reload(index, path)`` callback
that fills one shard from the checkpoint at ``path`` unless it already holds its rows.
"""

from __future__ import annotations

from shardemb.errors import (
    ShardembError,
    ShardRestartedError,
    ShardUnavailableError,
)

__all__ = ["recover", "report_reloaded"]


def recover(store, err: ShardUnavailableError, reload) -> None:
    """Bring back the shards of ``store`` that died or hold no rows: use or start their
    replacements and ``reload`` them from the table's newest committed checkpoint, then
    raise :class:`ShardRestartedError` naming them; raise :class:`ShardUnavailableError`
    when there is no checkpoint or the reload failed (they then refuse every call, and
    the next call tries again). Re-raises ``err`` when every shard is well. Always raises.
    """
    backend, handles, name = store._backend, store._handles, store.config.name
    states = backend.alive(handles)
    lost = [i for i, s in enumerate(states) if s is None or not s["loaded"]]
    # Shards an earlier recovery here could not reload: those loaded since are told now.
    # The list is empty meanwhile, so that the reloads below report nothing themselves.
    keep, store._unreported = store._unreported - set(lost), set()
    late = [i for i in sorted(keep) if states[i] is not None and states[i]["loaded"]]
    if not lost and not late:
        store._unreported = keep
        raise err
    try:
        if lost:
            _reload(store, err, lost, states, reload)
    except BaseException:
        # Each call checks them (report_reloaded): once loaded, by any process, this
        # process is told the step they went back to.
        store._unreported = keep | set(lost)
        raise
    store._unreported = keep - set(late)
    shards = lost + late
    raise _restarted(name, shards, backend.alive([handles[i] for i in shards])) from err


def _reload(store, err, lost: list[int], states: list, reload) -> None:
    """Restart the dead ones of ``lost`` (or attach to another process's replacement) and
    reload them all; raises :class:`ShardUnavailableError` unless all hold their rows."""
    backend, handles, name = store._backend, store._handles, store.config.name
    # Pushes to those shards are lost; those to live shards are still applied by them.
    store._pending.drop_shards(lost)
    known = [tuple(s["checkpoint"]) for s in states if s is not None and s["checkpoint"]]
    path = max(known)[1] if known else store.last_checkpoint
    if path is None:
        raise ShardUnavailableError(
            f"Shard(s) {lost} of table {name!r} died and there is no checkpoint to "
            "restart them from (save one with store.save or a CheckpointManager). "
            f"Cause: {err}"
        ) from err
    for i in lost:
        if states[i] is None:  # in place: the shared-memory channel sees the list
            handles[i] = backend.restart(
                store.config, i, handles[i], store._resources, store._detached
            )
    channel = store._shm
    for i in lost:  # a dead shard's shared rows: nobody else removes them
        reader = channel.tables[i] if channel is not None else None
        if reader is not None and states[i] is None:
            reader.close(unlink=True)
            channel.tables[i] = None
    store._reset_channel()  # probe again: a restarted shard may run elsewhere
    failures: dict[int, ShardembError] = {}
    for i in lost:
        try:
            reload(i, path)
        except ShardembError as e:  # the shard then refuses every call: never zeros
            failures[i] = e
    after = backend.alive([handles[i] for i in lost])
    empty = [i for i, s in zip(lost, after, strict=True) if s is None or not s["loaded"]]
    if empty:
        cause = next(iter(failures.values()), err)
        raise ShardUnavailableError(
            f"Shard(s) {empty} of table {name!r} died and could not be reloaded from the "
            f"checkpoint {path!r}; they refuse every call until a reload works (the next "
            f"call tries again). Cause: {cause}"
        ) from cause


def report_reloaded(store) -> None:
    """Raise :class:`ShardRestartedError` for the shards of ``store`` whose reload failed
    here (``store._unreported``) and that are loaded now, by any process; the others stay
    on the list. Called at the start of every call: a round trip only while any are."""
    if not store._unreported:
        return
    todo = sorted(store._unreported)
    states = store._backend.alive([store._handles[i] for i in todo])
    loaded = [(i, s) for i, s in zip(todo, states, strict=True) if s and s["loaded"]]
    if loaded:
        store._unreported -= {i for i, _ in loaded}
        raise _restarted(store.config.name, [i for i, _ in loaded], [s for _, s in loaded])


def _restarted(name: str, shards: list[int], states: list[dict]) -> ShardRestartedError:
    """The error naming ``shards`` (of ``states``), the checkpoint and the step each went
    back to."""
    loaded = [s["loaded_from"] if s else ("?", "?") for s in states]  # None: died again
    sources = sorted({path for path, _ in loaded})
    steps = [step for _, step in loaded]
    if len(set(steps)) == 1:
        step = f"step {steps[0]}"
    else:
        step = ", ".join(f"shard {i} at step {n}" for i, n in zip(shards, steps, strict=True))
    where = repr(sources[0]) if len(sources) == 1 else repr(sources)
    return ShardRestartedError(
        f"Shard(s) {shards} of table {name!r} died and were restarted from the checkpoint "
        f"{where} ({step}). Pushes applied to them since that checkpoint were lost; the "
        "other shards are untouched."
    )
