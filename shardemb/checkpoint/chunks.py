"""Chunk I/O: whole-chunk reads and writes of one checkpoint's arrays, several at a time."""

from __future__ import annotations

import os
import struct
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import NoReturn

import numpy as np

from shardemb._files import fsync
from shardemb.checkpoint.location import Location, io_error
from shardemb.errors import CheckpointCorruptError


class ChunkIO:
    """Whole-chunk reads and writes of one checkpoint's arrays, several at a time.

    Local uncompressed arrays move chunk files directly (``readinto`` the destination; one
    write and fsync per chunk) in zarr's own encoding: the rows' little-endian bytes, the
    edge chunk zero-padded to full size, then the crc32c. Measured here that is 1.4x zarr's
    read and 1.6x its write throughput. Other arrays go through zarr.
    """

    def __init__(
        self,
        loc: Location,
        path: str,
        *,
        dtype: str,
        chunk_rows: int,
        slot_dtype: str | None = None,
        compression: str | None,
        checksum: bool,
    ):
        self.loc, self.path = loc, path
        self.dtype = np.dtype(dtype)
        self.slot_dtype = np.dtype(slot_dtype or dtype)
        self.chunk_rows, self.checksum = chunk_rows, bool(checksum)
        self.direct = bool(loc.local) and not compression and sys.byteorder == "little"
        self.pool = ThreadPoolExecutor(8)
        self._arrays: dict = {}

    def __enter__(self) -> ChunkIO:
        return self

    def __exit__(self, *exc) -> None:
        self.pool.shutdown(cancel_futures=True)

    def write(self, name: str, start: int, block: np.ndarray) -> list:
        """Start writing ``block`` at row ``start`` (a chunk boundary) of array ``name``;
        returns futures that are done once the chunks are durable."""
        c0, n = start // self.chunk_rows, self.chunk_rows
        if self.direct:
            return [
                self.pool.submit(self._write_chunk, name, c0 + i // n, block[i : i + n])
                for i in range(0, len(block), n)
            ]
        self._zarr(name, write=True)[start : start + len(block)] = block
        if not self.loc.local:
            return []
        chunks = range(c0, -(-(start + len(block)) // n))
        return [self.pool.submit(fsync, self.loc.file(f"{name}/c/{c}/0")) for c in chunks]

    def _write_chunk(self, name: str, c: int, rows: np.ndarray) -> None:
        import google_crc32c

        file = self.loc.file(f"{name}/c/{c}/0")
        os.makedirs(os.path.dirname(file), exist_ok=True)
        dtype = self._dtype(name)
        data = np.ascontiguousarray(rows, dtype).reshape(-1).view(np.uint8)
        pad = bytes((self.chunk_rows - len(rows)) * rows.shape[1] * dtype.itemsize)
        with open(file, "wb") as f:
            f.write(data)
            f.write(pad)
            if self.checksum:
                f.write(struct.pack("<I", google_crc32c.extend(google_crc32c.value(data), pad)))
            f.flush()
            os.fsync(f.fileno())

    def read(self, name: str, num_rows: int, lo: int, hi: int, out: np.ndarray) -> np.ndarray:
        """Rows ``[lo, hi)`` of array ``name`` (of ``num_rows`` rows) into ``out``; damage
        raises :class:`CheckpointCorruptError` naming the array and chunk."""
        if not self.direct:
            arr = self._zarr(name)
            try:
                from zarr.core.buffer.cpu import NDBuffer

                arr.get_basic_selection(slice(lo, hi), out=NDBuffer.from_numpy_array(out))
            except Exception as err:  # noqa: BLE001 - zarr raises ValueError/OSError/codecs
                raise_read_error(
                    self.path, f"rows [{lo}, {hi}) of array {name!r} cannot be read", err
                )
            return out
        n = self.chunk_rows
        futures = []
        for c in range(lo // n, (hi - 1) // n + 1):
            a, b = max(lo, c * n), min(hi, (c + 1) * n, num_rows)
            futures.append(
                self.pool.submit(self._read_chunk, name, c, a - c * n, out[a - lo : b - lo])
            )
        for f in futures:
            f.result()
        return out

    def _dtype(self, name: str) -> np.dtype:
        return self.slot_dtype if "slots/" in name else self.dtype

    def _read_chunk(self, name: str, c: int, first: int, dest: np.ndarray) -> None:
        import google_crc32c

        key = f"{name}/c/{c}/0"
        whole = dest if first == 0 and len(dest) == self.chunk_rows else None
        if whole is None:  # part of a chunk: read all of it (the checksum covers all)
            whole = np.empty((self.chunk_rows, dest.shape[1]), self._dtype(name))
        data = whole.reshape(-1).view(np.uint8)
        size = data.size + 4 * self.checksum
        file = self.loc.file(key)
        check_inside(self.loc, self.path, key)
        try:
            f = open(file, "rb", buffering=0)
        except (FileNotFoundError, NotADirectoryError) as err:
            raise CheckpointCorruptError(
                f"Checkpoint {self.path!r}: chunk {key!r} is missing."
            ) from err
        except OSError as err:
            raise io_error(self.path, f"chunk {key!r} cannot be opened", err) from err
        with f:
            found = os.fstat(f.fileno()).st_size
            if found != size:
                raise CheckpointCorruptError(
                    f"Checkpoint {self.path!r}: chunk {key!r} has {found} bytes, not {size}."
                )
            view, done = memoryview(data), 0
            try:
                while done < data.size:
                    done += f.readinto(view[done:]) or _short_read(self.path, key)
                tail = f.read(4)
            except OSError as err:
                raise io_error(self.path, f"chunk {key!r} cannot be read", err) from err
        if self.checksum and google_crc32c.value(data) != int.from_bytes(tail, "little"):
            raise CheckpointCorruptError(
                f"Checkpoint {self.path!r}: checksum mismatch (crc32c) in chunk {key!r}."
            )
        if whole is not dest:
            dest[:] = whole[first : first + len(dest)]

    def _zarr(self, name: str, write: bool = False):
        arr = self._arrays.get(name)
        if arr is None:
            import zarr

            try:
                arr = zarr.open_array(
                    self.loc.zarr_store(read_only=not write), path=name, mode="r+" if write else "r"
                )
            except Exception as err:  # noqa: BLE001 - any failure but I/O means damage
                raise_read_error(self.path, f"array {name!r} cannot be opened", err)
            if write:
                arr = arr.with_config({"write_empty_chunks": True})
            self._arrays[name] = arr
        return arr


def raise_read_error(path: str, what: str, err: Exception) -> NoReturn:
    """Raise, ``from err``, an I/O :class:`CheckpointError` for an ``OSError`` that is not
    a missing file, else :class:`CheckpointCorruptError` (damage)."""
    if isinstance(err, OSError) and not isinstance(err, FileNotFoundError | NotADirectoryError):
        raise io_error(path, what, err) from err
    raise CheckpointCorruptError(f"Checkpoint {path!r}: {what}: {why(err)}") from err


def check_inside(loc: Location, path: str, key: str) -> None:
    """Refuse file ``key`` of a local checkpoint when its real path (symlinks resolved)
    lies outside the checkpoint folder: a restore must not load another file's bytes."""
    if not loc.local:
        return
    root = os.path.realpath(loc.local)
    real = os.path.realpath(loc.file(key))
    if os.path.commonpath([root, real]) != root:
        raise CheckpointCorruptError(
            f"Checkpoint {path!r}: {key!r} is a symlink to a file outside the checkpoint "
            "folder; refusing to read it."
        )


def _short_read(path: str, key: str) -> int:
    raise CheckpointCorruptError(f"Checkpoint {path!r}: chunk {key!r} ended early.")


def why(err: BaseException) -> str:
    text = str(err)
    if "checksum" in text.lower():
        return f"checksum mismatch (crc32c) in a chunk ({text[:200]})"
    return f"{type(err).__name__}: {text[:300]}"
