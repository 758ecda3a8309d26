"""Shared-memory buffers: views, attach, and no files left behind."""

import errno
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from shardemb.transport import shm
from shardemb.transport.shm import SHM_DIR, SegmentCache, ShmSegment


def test_views_are_shared_between_mappings():
    buf = ShmSegment.create(4096)
    other = ShmSegment.attach(buf.name)
    buf.array(np.int64, (4,))[:] = [1, 2, 3, 4]
    assert other.array(np.int64, (2,), offset=16).tolist() == [3, 4]
    other.close()
    buf.close()
    assert not os.path.exists(os.path.join(SHM_DIR, buf.name))


def test_attached_buffers_evict_the_least_recently_used():
    bufs = [ShmSegment.create(4096) for _ in range(3)]
    cache = SegmentCache(capacity=2)
    for b in bufs:
        cache.get(b.name)
    assert list(cache._maps) == [bufs[1].name, bufs[2].name]
    for b in bufs:
        b.close()


def _spawn(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def test_files_of_exited_and_killed_processes_are_removed():
    exits = _spawn(
        "from shardemb.transport.shm import ShmSegment; print(ShmSegment.create(64).name)"
    )
    name = exits.communicate(timeout=60)[0].strip()
    assert not os.path.exists(os.path.join(SHM_DIR, name))  # removed at exit
    killed = _spawn(
        "import sys, time\nfrom shardemb.transport.shm import ShmSegment\n"
        "b = ShmSegment.create(64); print(b.name, flush=True); time.sleep(60)"
    )
    name = killed.stdout.readline().strip()
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait(timeout=30)
    assert os.path.exists(os.path.join(SHM_DIR, name))  # SIGKILL gives no chance to clean
    sweeper = _spawn("from shardemb.transport.shm import ShmSegment; ShmSegment.create(64).close()")
    sweeper.wait(timeout=60)
    assert not os.path.exists(os.path.join(SHM_DIR, name))  # swept by the next creator


@pytest.fixture
def small_shm(tmp_path, monkeypatch):
    """A 1 MiB tmpfs standing in for /dev/shm (as Docker's 64 MiB default, only smaller)."""
    mnt = tmp_path / "shm"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
        capture_output=True,
        timeout=30,
    )
    if done.returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    monkeypatch.setattr(shm, "SHM_DIR", str(mnt))
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], timeout=30)


def test_a_buffer_larger_than_free_shared_memory_raises_instead_of_sigbus(small_shm):
    with pytest.raises(OSError) as info:
        ShmSegment.create(4 << 20)
    assert info.value.errno == errno.ENOSPC and "bytes free" in str(info.value)
    assert os.listdir(small_shm) == []  # nothing left behind
    fits = ShmSegment.create(256 << 10)
    fits.array(np.uint8, (256 << 10,))[:] = 1  # every page is backed: no SIGBUS
    fits.close()
    assert os.listdir(small_shm) == []


def test_the_sweep_spares_live_owners_in_other_pid_namespaces_and_other_users(small_shm):
    # A live creator whose PID means nothing here (another PID namespace): its file is locked.
    live = small_shm / "shardemb-999999-aaaaaaaaaaaa"
    holder = _spawn(
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(live)!r}, os.O_CREAT | os.O_RDWR, 0o600)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)"
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        dead = small_shm / "shardemb-999998-bbbbbbbbbbbb"  # no lock: its owner is gone
        dead.write_bytes(b"x")
        other_user = small_shm / "shardemb-999997-cccccccccccc"
        other_user.write_bytes(b"x")
        os.chown(other_user, 54321, 54321)
        shm._sweep_stale()
        assert live.exists() and other_user.exists() and not dead.exists()
    finally:
        holder.kill()
        holder.wait(timeout=30)
    shm._sweep_stale()
    assert not live.exists()  # its owner died: swept


def test_a_full_shared_memory_falls_back_to_ray_with_one_warning(monkeypatch, table_name):
    import shardemb
    from shardemb.transport.channel import RequestBuffers

    with shardemb.EmbeddingStore.create(
        table_name,
        1000,
        8,
        num_shards=2,
        optimizer={"name": "sgd", "learning_rate": 1.0},
        initializer="zeros",
        seed=0,
    ) as store:
        assert store.lookup([1]).shape == (1, 8)
        assert store._channel() is not None  # co-located shards use shared memory

        def full(self, n):
            raise OSError(errno.ENOSPC, "no space left in the shared-memory folder")

        monkeypatch.setattr(RequestBuffers, "reserve", full)
        ids = np.arange(0, 1000, 7)
        with pytest.warns(RuntimeWarning, match="shared memory is too small") as seen:
            store.apply_gradients(ids, np.ones((ids.size, 8), np.float32))
            rows = store.lookup(ids)
        assert len(seen) == 1 and store._channel() is None
        np.testing.assert_array_equal(rows, -np.ones((ids.size, 8), np.float32))


def test_the_cache_drops_mappings_of_removed_buffers_and_released_ones():
    kept, removed, released = (ShmSegment.create(4096) for _ in range(3))
    cache = SegmentCache(check_every=3600.0)
    for b in (kept, removed, released):
        cache.get(b.name)
    removed.close()  # the router retired it: its file is gone
    assert removed.name in cache.info()["names"]  # no new attach, no check yet
    fresh = ShmSegment.create(4096)
    cache.get(fresh.name)  # attaching a new buffer drops those whose file is gone
    assert removed.name not in cache.info()["names"]
    cache.release([released.name])
    assert cache.info()["names"] == [kept.name, fresh.name]
    assert cache.info()["bytes"] == 2 * 4096
    for b in (kept, released, fresh):
        b.close()


def test_request_buffers_shrink_after_a_spike_and_not_before():
    from shardemb.transport.channel import RequestBuffers

    buf = RequestBuffers(8, "float32")
    buf.reserve(100)
    assert buf.capacity == RequestBuffers.MIN_CAPACITY
    buf.reserve(1_000_000)
    spike, spike_names = buf.capacity, buf.names
    for _ in range(RequestBuffers.SHRINK_AFTER - 1):
        buf.reserve(1000)
    buf.reserve(400_000)  # more than a quarter: the count starts again
    for _ in range(RequestBuffers.SHRINK_AFTER - 1):
        buf.reserve(1000)
    assert buf.capacity == spike and buf.names == spike_names
    buf.reserve(3000)
    assert buf.capacity == 6000 and buf.nbytes < spike * 8  # twice the recent peak
    assert not any(os.path.exists(os.path.join(SHM_DIR, n)) for n in spike_names)
    for _ in range(3 * RequestBuffers.SHRINK_AFTER):
        buf.reserve(10)
    assert buf.capacity == RequestBuffers.MIN_CAPACITY  # never below the minimum
    names = buf.names
    buf.close()
    assert not any(os.path.exists(os.path.join(SHM_DIR, n)) for n in names)
