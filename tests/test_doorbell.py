"""Doorbells: a router's pushes to shard hosts on its machine, rung through shared memory
instead of Ray calls, applied in order, with Ray calls after them seeing them, and every
way a doorbell can go wrong (full ring, too big a push, a dead host, a gone router)
ending in the Ray path or a raised error, never a lost or reordered push."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import psutil
import pytest

from shardemb import EmbeddingStore, ShardUnavailableError
from shardemb.errors import ShardError
from shardemb.transport import bells, doorbell, hosts
from shardemb.transport.backends import RayBackend
from shardemb.transport.doorbell import DoorbellClient, DoorbellFuture, DoorbellServer

OPT = {"name": "adam", "learning_rate": 0.05}


# -- the ring itself, both ends in this process --------------------------------------------
@pytest.fixture
def ends():
    applied = []

    def apply(items):
        applied.extend(items)
        return [ShardError(f"bad {a}") if m == "fail" else None for _, m, a in items]

    bell = DoorbellClient()
    server = DoorbellServer(bell.names, apply)
    bell.opened()
    yield bell, server, applied
    bell.close()
    server.stop()


def test_rung_pushes_are_applied_in_order_past_the_ring_s_end(ends):
    bell, _, applied = ends
    futures = []
    for i in range(5 * doorbell.SLOTS):
        fut = bell.send([("t", "push_at", (i,)), ("u", "fail" if i % 7 == 0 else "push_at", (i,))])
        if fut is None:  # every slot in use: the host is behind; wait for it, as Ray would
            bell.wait(futures, timeout=30)
            fut = bell.send(
                [("t", "push_at", (i,)), ("u", "fail" if i % 7 == 0 else "push_at", (i,))]
            )
        futures.append(fut)
    bell.wait(futures, timeout=30)
    assert [a[0] for _, _, a in applied] == [i for i in range(5 * doorbell.SLOTS) for _ in (0, 1)]
    for i, fut in enumerate(futures):
        first, second = bell.value(fut)
        assert first is None
        assert (isinstance(second, ShardError) and str(second) == f"bad {(i,)}") == (i % 7 == 0)
        assert second is None or i % 7 == 0


def test_a_push_too_big_for_a_slot_or_a_full_ring_is_left_to_the_caller(ends):
    bell, server, applied = ends
    assert bell.send([("t", "push_at", (b"x" * doorbell.SLOT_BYTES,))]) is None
    with server.lock:  # the host is busy (a Ray call holds its lock): nothing is applied
        sent = [bell.send([("t", "push_at", (i,))]) for i in range(doorbell.SLOTS + 3)]
        assert all(isinstance(f, DoorbellFuture) for f in sent[: doorbell.SLOTS])
        assert sent[doorbell.SLOTS :] == [None] * 3
        assert server.drain() == doorbell.SLOTS  # what a Ray call runs first
    bell.wait(sent[: doorbell.SLOTS], timeout=10)
    assert [a[0] for _, _, a in applied] == list(range(doorbell.SLOTS))


def test_a_killed_host_fails_the_pushes_it_never_applied():
    bell = DoorbellClient()
    code = textwrap.dedent(
        """
        import sys, time
        from shardemb.transport.doorbell import DoorbellServer
        DoorbellServer(sys.argv[1:4], lambda items: time.sleep(3600))  # stuck on the first
        print("ready", flush=True)
        time.sleep(3600)
        """
    )
    host = subprocess.Popen([sys.executable, "-c", code, *bell.names], stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        assert host.stdout.readline().strip() == "ready"
        bell.opened()
        rung = [bell.send([("t", "push_at", (i,))]) for i in range(3)]
        time.sleep(0.2)
        host.send_signal(signal.SIGKILL)
        host.wait(30)
        bell.wait(rung, timeout=30)  # finished: they never will be applied
        for fut in rung:
            with pytest.raises(ShardUnavailableError, match="not applied"):
                bell.value(fut)
        assert "exited" in bell.gone
        assert bell.send([("t", "push_at", (3,))]) is None  # the caller goes to Ray (and fails)
    finally:
        host.kill()
        bell.close()


def test_a_host_stops_serving_once_its_router_hangs_up():
    bell = DoorbellClient()
    server = DoorbellServer(bell.names, lambda items: [None] * len(items))
    bell.opened()
    bell.wait([bell.send([("t", "push_at", ())])], timeout=10)
    bell.close()
    server._thread.join(10)
    assert not server._thread.is_alive()
    assert not glob.glob(f"/dev/shm/shardemb_bell-{os.getpid()}-*")  # FIFOs unlinked once open


def test_a_router_that_rings_late_is_still_served(monkeypatch):
    monkeypatch.setattr(doorbell, "OPEN_WAIT_S", 0.2)  # how long a host waits for the open
    applied = []
    bell = DoorbellClient()
    server = DoorbellServer(bell.names, lambda items: applied.extend(items) or [None])
    try:
        bell.opened()
        time.sleep(0.6)  # opened, but nothing rung for longer than the host waits to open
        fut = bell.send([("t", "push_at", (7,))])
        bell.wait([fut], timeout=10)
        assert applied == [("t", "push_at", (7,))] and bell.value(fut) == [None]
    finally:
        bell.close()
        server.stop()


# -- through Ray: shard hosts -------------------------------------------------------------
def _tables(prefix: str, n: int, group: str | None, **kw) -> list:
    return [
        EmbeddingStore.create(
            f"{prefix}-{i}", 300, 4, num_shards=2, optimizer=OPT, seed=i, group=group, **kw
        )
        for i in range(n)
    ]


@pytest.fixture(params=["grouped", "own"])
def pair(request, ray_session, table_name):
    """Two tables on Ray, rung: in one group (their shards in 2 hosts) or each with actors
    of its own; and two like them on in-process shards (no Ray, no doorbell: the
    reference)."""
    group = f"g-{table_name}" if request.param == "grouped" else None
    rung = _tables(f"{table_name}-r", 2, group)
    plain = _tables(f"{table_name}-p", 2, None, backend="inprocess")
    yield rung, plain
    for t in rung + plain:
        t.close()


def _actor(store, shard: int):
    """The Ray actor that serves ``store``'s shard: its host, or its own."""
    h = store._handles[shard]
    return h.actor if isinstance(h, hosts.HostedHandle) else h


def _step(rng, n: int = 2):
    return [(rng.integers(0, 300, 48), rng.normal(size=(48, 4)).astype(np.float32))
            for _ in range(n)]  # fmt: skip


def _sleep_on(store, shard: int, seconds: float):
    """Keep the host of ``store``'s shard busy for ``seconds`` (a Ray call holding its lock)."""

    def sleep(_shard, s):
        import time

        time.sleep(s)

    sleep.__module__ = "__main__"  # pickled by value: the host cannot import the tests
    h = store._handles[shard]
    if isinstance(h, hosts.HostedHandle):
        return h.actor.call_shard.remote(h.table, "call", sleep, seconds)
    return h.call.remote(sleep, seconds)


def _pushes(monkeypatch) -> list:
    """The futures of every push sent from now on."""
    seen = []
    submit_many = RayBackend.submit_many

    def record(self, calls):
        out = submit_many(self, calls)
        seen.extend(f for f, _ in out)
        return out

    monkeypatch.setattr(RayBackend, "submit_many", record)
    return seen


def test_a_ray_call_after_a_rung_push_sees_it(pair, rng, monkeypatch):
    (a, _), _ = pair
    seen = _pushes(monkeypatch)
    ids = np.arange(0, 300, 2)  # shard 0's rows ("mod")
    before = a.to_numpy()[ids]
    busy = _sleep_on(a, 0, 0.5)  # the push waits in the ring behind a Ray call
    a.apply_gradients(ids, np.ones((ids.size, 4), np.float32))
    assert type(seen[-1]) is DoorbellFuture
    # Straight to the shard, past the router's read-your-writes wait: Ray runs this call
    # after the sleep, and the host first applies what was rung before it.
    h = a._handles[0]
    rows = a._backend.get([h.lookup.remote(ids // 2)], timeout=60)[0]
    assert a._backend.get([busy], timeout=60) == [None]
    assert not np.array_equal(rows, before)
    a.flush()
    np.testing.assert_array_equal(rows, a.to_numpy()[ids])


def test_pushes_left_to_ray_keep_their_order_with_rung_ones(pair, rng, monkeypatch):
    grouped, plain = pair
    seen = _pushes(monkeypatch)
    send = DoorbellClient.send
    calls = iter(range(10**6))
    # Every third push is too big for its slot: it goes through Ray, and the pushes after
    # it wait for Ray (not the ring) until it is applied.
    monkeypatch.setattr(
        DoorbellClient,
        "send",
        lambda bell, items: None if next(calls) % 3 == 0 else send(bell, items),
    )
    for i in range(24):
        if i == 12:
            busy = _sleep_on(grouped[0], 1, 1.0)  # and a full ring on one host for a while
        step = _step(rng)
        EmbeddingStore.apply_gradients_many([(t, *s) for t, s in zip(grouped, step, strict=True)])
        for t, s in zip(plain, step, strict=True):
            t.apply_gradients(*s)
    assert grouped[0]._backend.get([busy], timeout=60) == [None]
    kinds = {type(f) is DoorbellFuture for f in seen}
    assert kinds == {True, False}  # both paths were taken
    for g, p in zip(grouped, plain, strict=True):
        np.testing.assert_array_equal(g.to_numpy(), p.to_numpy())
        assert [i["step"] for i in g.info()] == [24, 24]


def test_an_actor_killed_with_rung_pushes_fails_them_and_never_hangs(pair, rng, monkeypatch):
    (a, b), _ = pair
    seen = _pushes(monkeypatch)
    for t in (a, b):  # a handle's first push asks every shard its step: done here
        t.apply_gradients([1], np.ones((1, 4), np.float32))
        t.flush()
    pid = a.placement()[1]["pid"]
    lost = [t for t in (a, b) if t.placement()[1]["pid"] == pid]  # both, when grouped
    _sleep_on(a, 1, 60)  # the rung pushes below are never applied
    EmbeddingStore.apply_gradients_many([(t, *s) for t, s in zip((a, b), _step(rng), strict=True)])
    assert type(seen[-1]) is DoorbellFuture
    os.kill(pid, signal.SIGKILL)
    psutil.Process(pid).wait(timeout=30)
    t0 = time.monotonic()
    for t in (a, b):
        if t in lost:
            with pytest.raises(ShardUnavailableError):
                t.flush()  # lost with the dead process: raised (no checkpoint to restart from)
        else:
            t.flush()  # its own actors live on
    assert time.monotonic() - t0 < 30


def test_a_host_stops_the_doorbell_of_a_router_that_exited(pair):
    (a, _), _ = pair
    a.apply_gradients([3], np.ones((1, 4), np.float32))
    a.flush()
    host = _actor(a, 1)  # id 3's
    served = a._backend.get([host.doorbells.remote()], timeout=60)[0]
    assert served >= 1  # this process's
    code = textwrap.dedent(
        f"""
        import sys, ray, numpy as np, shardemb
        from shardemb.transport import bells
        ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
        s = shardemb.EmbeddingStore.connect({a.name!r})
        s.apply_gradients([5], np.ones((1, 4), np.float32))
        s.flush()
        h = s._handles[1]
        host = getattr(h, "actor", h)
        print(ray.get(host.doorbells.remote()), len([b for b in bells._bells.values() if b]))
        """
    )
    import ray

    address = ray.get_runtime_context().gcs_address
    done = subprocess.run(
        [sys.executable, "-c", code, address], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [str(served + 1), "1"]  # the other process rang it too
    deadline = time.monotonic() + 30
    while a._backend.get([host.doorbells.remote()], timeout=60)[0] > served:
        assert time.monotonic() < deadline, "the exited router's doorbell is still served"
        time.sleep(0.1)
    assert a.lookup([5]).shape == (1, 4)


def test_without_doorbells_every_push_is_a_ray_call(pair, rng, monkeypatch):
    grouped, plain = pair
    monkeypatch.setattr(bells, "RING_DOORBELLS", False)
    seen = _pushes(monkeypatch)
    for _ in range(3):
        step = _step(rng)
        EmbeddingStore.apply_gradients_many([(t, *s) for t, s in zip(grouped, step, strict=True)])
        for t, s in zip(plain, step, strict=True):
            t.apply_gradients(*s)
    assert seen and not any(type(f) is DoorbellFuture for f in seen)
    for g, p in zip(grouped, plain, strict=True):
        np.testing.assert_array_equal(g.to_numpy(), p.to_numpy())


def test_no_room_for_a_doorbell_warns_once_and_pushes_go_through_ray(pair, rng, monkeypatch):
    grouped, plain = pair
    seen = _pushes(monkeypatch)

    def full(self):
        raise OSError(28, "no space left in the shared-memory folder")

    monkeypatch.setattr(DoorbellClient, "__init__", full)
    with pytest.warns(RuntimeWarning, match="No doorbell for shard actor") as warned:
        for _ in range(3):
            step = _step(rng)
            EmbeddingStore.apply_gradients_many(
                [(t, *s) for t, s in zip(grouped, step, strict=True)]
            )
            for t, s in zip(plain, step, strict=True):
                t.apply_gradients(*s)
    actors = {_actor(t, i)._actor_id for t in grouped for i in range(2)}
    assert len(warned) == len(actors)  # once per actor: 2 hosts, or 2 x 2 own actors
    assert not any(type(f) is DoorbellFuture for f in seen)
    for g, p in zip(grouped, plain, strict=True):
        np.testing.assert_array_equal(g.to_numpy(), p.to_numpy())
