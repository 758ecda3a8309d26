"""The interaction log type and the mapping between raw ids and contiguous rows.

Pure numpy (no Ray, TensorFlow or Keras).

Example:
    >>> from shardemb.recsys.interactions import Interactions, encode
    >>> encoded, users, items = encode(Interactions([42, 7], [100, 5], [4, 3], [1, 2]))
    >>> encoded.users.tolist(), users.raw_ids.tolist()
    ([1, 0], [7, 42])
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np

from shardemb._files import atomic_write
from shardemb.errors import DataFormatError, InvalidConfigError, InvalidIdsError

__all__ = ["IdMapping", "Interactions", "encode"]

_INT_KINDS = "iu"
_REAL_KINDS = "iuf"


def _column(value: Any, name: str, dtype: type, kinds: str) -> np.ndarray:
    array = np.asarray(value)
    if array.ndim != 1 or (array.size and array.dtype.kind not in kinds):
        kind = "integer" if kinds == _INT_KINDS else "real"
        raise InvalidConfigError(
            f"`{name}` must be a 1-D {kind} array. "
            f"Received: {name} of dtype {array.dtype} and shape {array.shape}"
        )
    return array.astype(dtype, copy=False)


@dataclass(frozen=True, slots=True, eq=False)
class Interactions:
    """A log of (user, item, rating, timestamp) interactions, one per position.

    Arrays are converted on construction (ids and timestamps must be integers) and must all
    have the same length. Two logs are equal when all four arrays are equal.

    Example:
        >>> log = Interactions(users=[1, 1, 2], items=[10, 20, 10],
        ...                    ratings=[5, 3, 4], timestamps=[100, 200, 150])
        >>> len(log), log.take([0, 2]).items.tolist()
        (3, [10, 10])
    """

    users: np.ndarray
    """User id of each interaction (raw file ids, or rows after :func:`encode`), int64."""
    items: np.ndarray
    """Item id of each interaction (raw file ids, or rows after :func:`encode`), int64."""
    ratings: np.ndarray
    """Explicit rating of each interaction (1 to 5 stars in MovieLens), float32."""
    timestamps: np.ndarray
    """Time of each interaction in seconds since the Unix epoch, int64."""

    def __post_init__(self) -> None:
        columns = {
            "users": _column(self.users, "users", np.int64, _INT_KINDS),
            "items": _column(self.items, "items", np.int64, _INT_KINDS),
            "ratings": _column(self.ratings, "ratings", np.float32, _REAL_KINDS),
            "timestamps": _column(self.timestamps, "timestamps", np.int64, _INT_KINDS),
        }
        lengths = {name: len(array) for name, array in columns.items()}
        if len(set(lengths.values())) > 1:
            received = ", ".join(f"len({name})={n}" for name, n in lengths.items())
            raise InvalidConfigError(
                f"`users`, `items`, `ratings` and `timestamps` must have the same length. "
                f"Received: {received}"
            )
        for name, array in columns.items():
            object.__setattr__(self, name, array)  # frozen: the only way to store the cast

    def __len__(self) -> int:
        return len(self.users)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Interactions):
            return NotImplemented
        return all(
            np.array_equal(getattr(self, name), getattr(other, name))
            for name in ("users", "items", "ratings", "timestamps")
        )

    __hash__ = None  # type: ignore[assignment]  # arrays are mutable

    def __repr__(self) -> str:  # cheap: logs hold millions of rows
        return f"Interactions(len={len(self)})"

    def take(self, index: Any) -> Interactions:
        """Return the interactions at ``index`` (an integer array, boolean mask or slice).

        Example:
            >>> log = Interactions([1, 2], [3, 4], [5.0, 4.0], [10, 20])
            >>> log.take(log.users == 2).items.tolist()
            [4]
        """
        return Interactions(
            self.users[index], self.items[index], self.ratings[index], self.timestamps[index]
        )


def check_interactions(name: str, value: object) -> None:
    """Raise :class:`InvalidConfigError` unless ``value`` is an :class:`Interactions`."""
    if not isinstance(value, Interactions):
        raise InvalidConfigError(
            f"`{name}` must be an Interactions. Received: {name} of type {type(value).__name__}"
        )


class IdMapping:
    """A bijection between raw ids (as in the data files) and contiguous rows ``0..n-1``.

    Rows follow the order of the sorted raw ids. Two mappings are equal when they hold the
    same raw ids.

    Example:
        >>> mapping = IdMapping.fit([30, 10, 20, 10])
        >>> mapping.to_rows([10, 30]).tolist(), mapping.to_raw([1]).tolist(), len(mapping)
        ([0, 2], [20], 3)
    """

    __slots__ = ("_raw_ids",)

    def __init__(self, raw_ids: Any) -> None:
        """Wrap ``raw_ids``, which must be strictly increasing integers (see :meth:`fit`)."""
        raw = _column(raw_ids, "raw_ids", np.int64, _INT_KINDS).copy()
        if raw.size > 1 and not np.all(raw[1:] > raw[:-1]):
            raise InvalidConfigError(
                "`raw_ids` must be strictly increasing (use `IdMapping.fit` for any ids). "
                f"Received: raw_ids={_preview(raw)}"
            )
        raw.flags.writeable = False
        self._raw_ids = raw

    @classmethod
    def fit(cls, raw_ids: Any) -> IdMapping:
        """Map the distinct values of ``raw_ids``, in sorted order, to rows ``0..n-1``.

        Example:
            >>> IdMapping.fit([7, 3, 7]).raw_ids.tolist()
            [3, 7]
        """
        return cls(np.unique(_column(np.ravel(raw_ids), "raw_ids", np.int64, _INT_KINDS)))

    @property
    def raw_ids(self) -> np.ndarray:
        """The raw id of each row, read-only int64 array of length ``len(self)``."""
        return self._raw_ids

    def __len__(self) -> int:
        return self._raw_ids.size

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, IdMapping):
            return NotImplemented
        return np.array_equal(self._raw_ids, other._raw_ids)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"IdMapping(len={len(self)}, raw_ids={_preview(self._raw_ids)})"

    def to_rows(self, raw_ids: Any, *, default: int | None = None) -> np.ndarray:
        """Return the row of each raw id (any shape; int64 of the same shape).

        Unknown raw ids raise :class:`InvalidIdsError` naming how many and the first few,
        unless ``default`` is given: then they map to ``default`` (e.g. ``-1``).

        Example:
            >>> mapping = IdMapping.fit([10, 20])
            >>> mapping.to_rows([[20, 10]]).tolist(), mapping.to_rows([20, 99], default=-1).tolist()
            ([[1, 0]], [1, -1])
        """
        raw = np.asarray(raw_ids)
        if raw.size and raw.dtype.kind not in _INT_KINDS:
            raise InvalidIdsError(
                f"`raw_ids` must be integers. Received: raw_ids of dtype {raw.dtype}"
            )
        raw = raw.astype(np.int64, copy=False)
        rows = np.searchsorted(self._raw_ids, raw)
        if len(self):
            known = self._raw_ids[np.minimum(rows, len(self) - 1)] == raw
        else:
            known = np.zeros(raw.shape, dtype=bool)
        if not known.all():
            if default is None:
                unknown = np.unique(raw[~known])
                raise InvalidIdsError(
                    f"{np.count_nonzero(~known)} of {raw.size} raw ids are not in the mapping "
                    f"({unknown.size} distinct, first: {_preview(unknown)}); pass `default` "
                    f"to map them to a sentinel row."
                )
            rows = np.where(known, rows, default)
        return rows.astype(np.int64, copy=False)

    def to_raw(self, rows: Any) -> np.ndarray:
        """Return the raw id of each row (any shape; rows must be in ``[0, len(self))``).

        Example:
            >>> IdMapping.fit([10, 20]).to_raw([1, 0]).tolist()
            [20, 10]
        """
        index = np.asarray(rows)
        if index.size and index.dtype.kind not in _INT_KINDS:
            raise InvalidIdsError(f"`rows` must be integers. Received: rows of dtype {index.dtype}")
        bad = (index < 0) | (index >= len(self))
        if bad.any():
            raise InvalidIdsError(
                f"`rows` must be in [0, {len(self)}). Received: {np.count_nonzero(bad)} rows "
                f"outside, first: {_preview(np.asarray(index)[bad])}"
            )
        return self._raw_ids[index]

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the mapping as JSON to a local path (atomically) or an fsspec URL.

        Example:
            >>> import os, tempfile
            >>> path = os.path.join(tempfile.mkdtemp(), "users.json")
            >>> IdMapping.fit([5, 9]).save(path)
            >>> IdMapping.load(path) == IdMapping.fit([9, 5])
            True
        """
        text = json.dumps(
            {"format": "shardemb.IdMapping", "version": 1, "raw_ids": self._raw_ids.tolist()}
        )
        path = os.fspath(path)
        protocol, local = fsspec.core.split_protocol(path)
        if protocol not in (None, "file", "local"):
            with fsspec.open(path, "w") as f:
                f.write(text)
            return
        # Readers never see a half-written file; a unique temporary name per writer.
        atomic_write(local, text, tmp=f"{local}.tmp-{uuid.uuid4().hex}")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> IdMapping:
        """Read a mapping written by :meth:`save` (local path or fsspec URL).

        Raises:
            FileNotFoundError: nothing at ``path``.
            DataFormatError: the file is not a saved :class:`IdMapping`.

        Example:
            >>> import os, tempfile
            >>> path = os.path.join(tempfile.mkdtemp(), "items.json")
            >>> IdMapping.fit([3]).save(path)
            >>> len(IdMapping.load(path))
            1
        """
        path = os.fspath(path)
        with fsspec.open(path, "r", encoding="utf-8") as f:
            text = f.read()
        try:
            payload = json.loads(text)
            if payload.get("format") != "shardemb.IdMapping" or payload.get("version") != 1:
                raise ValueError("missing format 'shardemb.IdMapping' version 1")
            raw_ids = payload["raw_ids"]
            if not all(isinstance(x, int) and not isinstance(x, bool) for x in raw_ids):
                raise ValueError("`raw_ids` must be a list of integers")
            return cls(np.asarray(raw_ids, dtype=np.int64))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise DataFormatError(f"{path}: not a saved IdMapping ({err}).") from err


def encode(interactions: Interactions) -> tuple[Interactions, IdMapping, IdMapping]:
    """Replace raw user and item ids by contiguous rows.

    Returns the encoded interactions and the user and item mappings (rows in sorted raw-id
    order, see :meth:`IdMapping.fit`).

    Example:
        >>> log = Interactions([42, 7, 42], [100, 100, 5], [4, 3, 5], [1, 2, 3])
        >>> encoded, users, items = encode(log)
        >>> encoded.users.tolist(), encoded.items.tolist(), users.raw_ids.tolist()
        ([1, 0, 1], [1, 1, 0], [7, 42])
    """
    raw_users, user_rows = np.unique(interactions.users, return_inverse=True)
    raw_items, item_rows = np.unique(interactions.items, return_inverse=True)
    encoded = Interactions(
        user_rows.reshape(-1), item_rows.reshape(-1), interactions.ratings, interactions.timestamps
    )
    return encoded, IdMapping(raw_users), IdMapping(raw_items)


def _preview(values: np.ndarray, count: int = 5) -> str:
    head = ", ".join(str(v) for v in np.ravel(values)[:count].tolist())
    return f"[{head}{', ...' if np.size(values) > count else ''}]"
