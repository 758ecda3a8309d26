"""Shared-memory buffers: views, attach, and no files left behind."""

import os
import signal
import subprocess
import sys

import numpy as np

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
