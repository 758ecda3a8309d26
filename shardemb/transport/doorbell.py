"""Doorbells: a router's pushes to a shard host on its machine, without a Ray call.

A Ray actor call costs 2.5-3 ms end to end on a loaded 2-core machine, most of it CPU in
both processes, far more than applying a step's push (about 0.1 ms per table). A router
whose pushes go to a host it shares ``/dev/shm`` with (the push buffers already do) rings
that host's doorbell instead: it writes the step's ``(table, method, args)`` items into a
slot of a shared ring, bumps the ring's sequence number and writes one byte into a FIFO.
A thread of the host, blocked on that FIFO (no CPU while idle), applies the slots in
order, writes each one's answer (the errors of its items) back into its slot and writes a
byte into a second FIFO, which the router waits on. The ring is the order: a router's
pushes are applied in the order it rang, and a host runs every Ray call only after the
slots rung before it (:meth:`DoorbellServer.drain`), so a lookup, a flush or a save that
follows a push through Ray sees it, as Ray's own ordering would give.

Ends are found, not assumed: the router's end of the answer FIFO reads end-of-file once
the host process is gone (killed, crashed), so a push in the ring fails as a Ray call to
a dead actor would; the host's end of the bell FIFO reads end-of-file once the router is
gone, and its thread unmaps the ring and stops. Both FIFOs are unlinked as soon as both
ends hold them: nothing is left behind under ``/dev/shm`` by a kill.

Example (both ends in one process; a host does this in its own):
    >>> bell = DoorbellClient()
    >>> done = []
    >>> server = DoorbellServer(bell.names, lambda items: done.extend(items) or [None])
    >>> bell.opened()
    >>> fut = bell.send([("t", "push_at", (1,))])
    >>> bell.wait([fut], timeout=10)
    >>> bell.value(fut), done
    ([None], [('t', 'push_at', (1,))])
    >>> bell.close(); server.stop()
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import threading
import time
import uuid

import numpy as np

from shardemb.errors import ShardError, ShardTimeoutError, ShardUnavailableError
from shardemb.transport.shm import SHM_DIR, ShmSegment

__all__ = ["DoorbellClient", "DoorbellFuture", "DoorbellServer", "done", "values", "wait"]

#: The ring: a header (the router's last rung sequence number, the host's last applied
#: one), then ``SLOTS`` slots of ``SLOT_BYTES``: a slot header (its sequence number, the
#: request's and the answer's length), the pickled request, then the pickled answer.
HEADER = 64
SLOT_HEADER = 32
SLOTS = 16
SLOT_BYTES = 1 << 16
#: Room kept in a slot for its answer; a request needing more goes through Ray.
ANSWER_BYTES = 1 << 12
#: Seconds a host waits for the router to open its end of the bell FIFO.
OPEN_WAIT_S = 60.0
#: Errors kept per bell: a push's answer is fetched soon after it is applied, if ever.
KEEP_ANSWERS = 4096


def _slot(seq: int) -> int:
    return HEADER + ((seq - 1) % SLOTS) * SLOT_BYTES


class DoorbellFuture:
    """A rung push: finished once its host applied it (or is gone)."""

    __slots__ = ("bell", "seq", "items")

    def __init__(self, bell: DoorbellClient, seq: int, items: int):
        self.bell, self.seq, self.items = bell, seq, items

    def __repr__(self) -> str:
        return f"DoorbellFuture(seq={self.seq}, items={self.items})"


class DoorbellClient:
    """The router's end of one shard actor's doorbell (one per actor and process)."""

    def __init__(self):
        self.key = uuid.uuid4().hex
        self.ring = ShmSegment.create(HEADER + SLOTS * SLOT_BYTES)
        self._head = self.ring.array(np.int64, (2,))  # rung, applied
        # Not "shardemb-...": the sweep of stale buffers must never open a FIFO.
        base = os.path.join(SHM_DIR, f"shardemb_bell-{os.getpid()}-{self.key[:12]}")
        self._paths = (f"{base}.ring", f"{base}.done")
        self._bell_fd = self._done_fd = None
        try:
            for path in self._paths:
                os.mkfifo(path, 0o600)
            # Open before the host opens its writing end: the host's open must not block.
            self._done_fd = os.open(self._paths[1], os.O_RDONLY | os.O_NONBLOCK)
        except BaseException:
            self.close()
            raise
        self.sent = self.applied = 0
        self.gone: str | None = None  # why the host is unreachable, once it is
        self._errors: dict[int, list] = {}
        self._lock = threading.Lock()

    @property
    def names(self) -> tuple[str, str, str]:
        """What the host attaches: the ring's name and the two FIFOs' paths."""
        return (self.ring.name, *self._paths)

    def opened(self) -> None:
        """The host attached: open the bell's writing end, and unlink both FIFOs."""
        self._bell_fd = os.open(self._paths[0], os.O_WRONLY | os.O_NONBLOCK)
        self._unlink_fifos()

    def send(self, items: list) -> DoorbellFuture | None:
        """Ring ``items`` (``(table, method, args)``; args of plain Python values), without
        waiting; None when they do not fit in a slot, or every slot is still in use, or the
        host is gone: the caller sends them through Ray (a Ray call runs after every push
        rung before it, so order holds)."""
        payload = pickle.dumps(items, protocol=pickle.HIGHEST_PROTOCOL)
        if len(payload) > SLOT_BYTES - SLOT_HEADER - ANSWER_BYTES or self._bell_fd is None:
            return None
        with self._lock:
            seq = self.sent + 1
            self._read_answers()
            self._harvest()
            if seq - SLOTS > self.applied or self.gone is not None:
                return None
            off = _slot(seq)
            self.ring.array(np.uint8, (len(payload),), off + SLOT_HEADER)[:] = np.frombuffer(
                payload, np.uint8
            )
            slot = self.ring.array(np.int64, (3,), off)
            slot[1], slot[2] = len(payload), -1
            slot[0] = seq  # written last: the host reads a slot only once it carries its seq
            self._head[0] = self.sent = seq
            try:
                os.write(self._bell_fd, b"\0")
            except BlockingIOError:
                pass  # the FIFO is full of unread rings: the host is awake anyway
            except BrokenPipeError:
                self.gone = "it closed the doorbell (its process exited)"
            return DoorbellFuture(self, seq, len(items))

    def _harvest(self) -> None:
        """Take the answers of the pushes applied since the last look (lock held)."""
        applied = int(self._head[1])
        for seq in range(self.applied + 1, applied + 1):
            off = _slot(seq)
            _, req, ans = (int(v) for v in self.ring.array(np.int64, (3,), off))
            if ans > 0:
                blob = bytes(self.ring.array(np.uint8, (ans,), off + SLOT_HEADER + req))
                self._errors[seq] = pickle.loads(blob)  # noqa: S301 - our own host wrote it
        self.applied = max(self.applied, applied)
        for old in [s for s in self._errors if s <= self.applied - KEEP_ANSWERS]:
            del self._errors[old]

    def _wait_answer(self, deadline: float | None) -> None:
        """Block until the host answers (or is gone, or ``deadline`` passes: raises)."""
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise ShardTimeoutError("A shard actor did not apply a push in time.")
        ready, _, _ = select.select([self._done_fd], [], [], left)
        if ready:
            self._read_answers()
        self._harvest()

    def _read_answers(self) -> None:
        try:
            data = os.read(self._done_fd, 1 << 16)
        except BlockingIOError:
            return
        if not data:
            self._harvest()
            self.gone = self.gone or "its process exited (the doorbell's answer pipe closed)"

    def finished(self, fut: DoorbellFuture) -> bool:
        """Whether ``fut`` was applied, or can no longer be (its host is gone)."""
        with self._lock:
            self._read_answers()
            self._harvest()
            return fut.seq <= self.applied or self.gone is not None

    def wait(self, futures: list, timeout: float | None = None) -> None:
        """Block until every one of ``futures`` is finished (see :meth:`finished`)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last = max(f.seq for f in futures)
        with self._lock:
            self._harvest()
            while last > self.applied and self.gone is None:
                try:
                    self._wait_answer(deadline)
                except ShardTimeoutError:
                    n = sum(f.seq > self.applied for f in futures)
                    raise ShardTimeoutError(
                        f"{n} push(es) did not finish within {timeout} s."
                    ) from None

    def value(self, fut: DoorbellFuture) -> list:
        """The answer of the finished ``fut``: per item None or its error; raises
        :class:`ShardUnavailableError` for a push its host never applied."""
        with self._lock:
            self._harvest()
            if fut.seq > self.applied:
                raise ShardUnavailableError(
                    f"A shard actor is unreachable: {self.gone or 'not answering'}; "
                    f"push {fut.seq} was not applied."
                )
            return self._errors.get(fut.seq) or [None] * fut.items

    def _unlink_fifos(self) -> None:
        for path in self._paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def close(self) -> None:
        """Hang up: the host's thread sees end-of-file and stops."""
        self._unlink_fifos()
        for fd in (self._bell_fd, self._done_fd):
            if fd is not None:
                os.close(fd)
        self._bell_fd = self._done_fd = None
        self.gone = self.gone or "the doorbell was closed"
        self.ring.close()


class DoorbellServer:
    """The host's end: a thread applying rung slots in order through ``apply(items)``
    (which returns per item None or its error), with ``lock`` held (the host's, also held
    by its Ray methods, which call :meth:`drain` first)."""

    def __init__(self, names, apply, lock=None, on_stop=None):
        ring_name, bell_path, done_path = names
        self._apply, self._on_stop = apply, on_stop
        self.lock = lock if lock is not None else threading.RLock()
        self.ring = ShmSegment.attach(ring_name)
        self._head = self.ring.array(np.int64, (2,))
        self.applied = int(self._head[1])
        self._bell_fd = os.open(bell_path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            self._done_fd = os.open(done_path, os.O_WRONLY | os.O_NONBLOCK)
        except BaseException:
            os.close(self._bell_fd)
            raise
        self._stopped = self._closed = self._draining = False
        self._wake = os.pipe()  # stop() wakes the thread through it
        self._thread = threading.Thread(target=self._serve, name="shardemb-doorbell", daemon=True)
        self._thread.start()

    def drain(self) -> int:
        """Apply every slot rung so far (the caller holds the lock). Returns how many."""
        if self._stopped or self._draining:
            return 0  # stopped, or called again from a push being applied: not reentrant
        self._draining = True
        try:
            return self._drain()
        finally:
            self._draining = False

    def _drain(self) -> int:
        rung, start = int(self._head[0]), self.applied
        while self.applied < rung:
            seq = self.applied + 1
            off = _slot(seq)
            stamp, req, _ = (int(v) for v in self.ring.array(np.int64, (3,), off))
            if stamp != seq:
                break  # not written through yet: the router's byte follows
            blob = bytes(self.ring.array(np.uint8, (req,), off + SLOT_HEADER))
            answer = self._run(blob)
            self._answer(off, req, answer)
            self._head[1] = self.applied = seq
        if self.applied > start:
            try:
                os.write(self._done_fd, b"\0")
            except BlockingIOError:
                pass  # the router has not read its earlier bytes: it is not waiting
            except BrokenPipeError:
                self._stopped = True  # the router is gone
        return self.applied - start

    def _run(self, blob: bytes) -> list:
        try:
            items = pickle.loads(blob)  # noqa: S301 - the router of this machine wrote it
        except Exception as err:  # noqa: BLE001 - reported as the push's error
            return [ShardError(f"A rung push could not be read: {err!r}")]
        return self._apply(items)

    def _answer(self, off: int, req: int, answer: list) -> None:
        slot = self.ring.array(np.int64, (3,), off)
        if all(a is None for a in answer):
            slot[2] = 0
            return
        try:
            blob = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # noqa: BLE001 - an error that does not pickle: its text
            blob = b""
        if not blob or len(blob) > SLOT_BYTES - SLOT_HEADER - req:
            short = [None if a is None else ShardError(repr(a)[:500]) for a in answer]
            blob = pickle.dumps(short, protocol=pickle.HIGHEST_PROTOCOL)
        self.ring.array(np.uint8, (len(blob),), off + SLOT_HEADER + req)[:] = np.frombuffer(
            blob, np.uint8
        )
        slot[2] = len(blob)

    def _serve(self) -> None:
        # Until the router opens its end, the FIFO reads end-of-file at once; a wait that
        # times out instead means a writer holds it open.
        opened, deadline = False, time.monotonic() + OPEN_WAIT_S
        fds = [self._bell_fd, self._wake[0]]
        try:
            while not self._stopped:
                ready, _, _ = select.select(fds, [], [], None if opened else 0.01)
                if self._wake[0] in ready:
                    return
                if not ready:
                    opened = True
                    continue
                if not os.read(self._bell_fd, 1 << 16):  # end-of-file
                    if opened or time.monotonic() > deadline:
                        return  # the router hung up (or never came)
                    time.sleep(0.01)
                    continue
                opened = True
                with self.lock:
                    self.drain()
        finally:
            self._close()

    def stop(self) -> None:
        """Stop serving (a slot still rung is not applied); returns once it stopped."""
        with self.lock:
            if self._closed:
                return
            self._stopped = True
            os.write(self._wake[1], b"\0")
        if threading.current_thread() is not self._thread:
            self._thread.join(10.0)

    def _close(self) -> None:
        with self.lock:
            self._stopped = self._closed = True
            for fd in (self._bell_fd, self._done_fd, *self._wake):
                os.close(fd)
            self.ring.close()
        if self._on_stop is not None:
            self._on_stop(self)


# -- futures of several kinds: what the Ray backend's get, done and wait call -------------
def _rung(futures: list) -> dict:
    """The doorbell futures of ``futures``, by their doorbell."""
    out: dict = {}
    for f in futures:
        if type(f) is DoorbellFuture:
            out.setdefault(id(f.bell), (f.bell, []))[1].append(f)
    return out


def wait(futures: list, timeout: float | None, wait_rest) -> None:
    """Block until ``futures`` are finished: the rung ones here, the rest by
    ``wait_rest(rest, timeout)``; one ``timeout`` for all."""
    deadline = None if timeout is None else time.monotonic() + timeout
    for bell, rung in _rung(futures).values():
        left = None if deadline is None else max(deadline - time.monotonic(), 1e-3)
        bell.wait(rung, left)
    rest = [f for f in futures if type(f) is not DoorbellFuture]
    if rest:
        wait_rest(rest, None if deadline is None else max(deadline - time.monotonic(), 1e-3))


def values(futures: list, timeout: float | None, get_rest) -> list:
    """The answers of ``futures`` in their order: rung ones' from their doorbells (after
    waiting), the rest's from ``get_rest(rest)``."""
    wait([f for f in futures if type(f) is DoorbellFuture], timeout, None)
    rest = iter(get_rest([f for f in futures if type(f) is not DoorbellFuture]))
    return [f.bell.value(f) if type(f) is DoorbellFuture else next(rest) for f in futures]


def done(futures: list, done_rest) -> tuple[list, list]:
    """``(finished, not finished)`` of ``futures`` without waiting; the rest's split by
    ``done_rest(rest)``."""
    rest = [f for f in futures if type(f) is not DoorbellFuture]
    _, running = done_rest(rest) if rest else ([], [])
    still = {id(f) for f in running}
    still.update(id(f) for f in futures if type(f) is DoorbellFuture and not f.bell.finished(f))
    return [f for f in futures if id(f) not in still], [f for f in futures if id(f) in still]
