"""Interaction logs for the recommender demo: MovieLens loading, id mapping, synthetic data, split.

Pure numpy (no Ray, TensorFlow or Keras) and vectorized: nothing loops over interactions.

Example:
    >>> from shardemb.recsys.data import synthetic_interactions, train_test_split
    >>> log = synthetic_interactions(100, 50, 2_000, seed=1)
    >>> train, test = train_test_split(log, holdout=1)
    >>> len(train) + len(test) == len(log), len(test)
    (True, 100)
"""

from __future__ import annotations

import io
import json
import math
import os
import uuid
from dataclasses import dataclass
from typing import Any, Literal, overload

import fsspec
import numpy as np

from shardemb.errors import DataFormatError, InvalidConfigError, InvalidIdsError

__all__ = [
    "IdMapping",
    "Interactions",
    "SyntheticTruth",
    "encode",
    "load_ratings",
    "synthetic_interactions",
    "train_test_split",
]

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


# --------------------------------------------------------------------------- loading

_FIELDS = ("user id", "item id", "rating", "timestamp")
_SEPARATORS = {"tsv": "\t", "dat": "::", "csv": ","}
_CHUNK_BYTES = 16 * 2**20  # parse this much at a time to bound temporary memory
_MAX_EXACT = 2**53  # values are parsed as float64: larger integers would lose digits


def load_ratings(path: str | os.PathLike[str], format: str | None = None) -> Interactions:
    """Read a MovieLens ratings file into raw-id :class:`Interactions`.

    The layout comes from the file name -- ``u.data`` or ``*.tsv`` (ML-100k, tab-separated,
    no header), ``*.dat`` (ML-1M/10M, ``user::item::rating::timestamp``), ``*.csv``
    (ML-latest/20M/25M, header ``userId,movieId,rating,timestamp``) -- or from ``format``,
    one of ``"tsv"``, ``"dat"``, ``"csv"``. ``path`` may be any fsspec URL. Ids are kept raw
    (use :func:`encode` for contiguous rows).

    Raises:
        InvalidConfigError: the format is unknown or cannot be told from the name.
        DataFormatError: the file is empty or a line is malformed; the message names the file,
            the 1-based line number and what is wrong.

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "ratings.dat")
        >>> with open(path, "w") as f:
        ...     _ = f.write("1::1193::5::978300760\\n1::661::3::978302109\\n")
        >>> load_ratings(path).items.tolist()
        [1193, 661]
    """
    path = os.fspath(path)
    fmt = _format_of(path, format)
    with fsspec.open(path, "rb") as f:
        data = f.read()
    return _parse_ratings(data, fmt, path)


def _format_of(path: str, format: str | None) -> str:
    if format is not None:
        if format not in _SEPARATORS:
            raise InvalidConfigError(
                f"`format` must be one of 'tsv' (u.data), 'dat' (ratings.dat) or 'csv' "
                f"(ratings.csv). Received: format={format!r}"
            )
        return format
    name = os.path.basename(path.rstrip("/"))
    if name == "u.data" or name.endswith(".tsv"):
        return "tsv"
    if name.endswith(".dat"):
        return "dat"
    if name.endswith(".csv"):
        return "csv"
    raise InvalidConfigError(
        f"Cannot tell the ratings format from the file name {name!r}: expected 'u.data' or "
        f"'*.tsv' (tsv), '*.dat' (dat) or '*.csv' (csv), or pass `format` as one of 'tsv', "
        f"'dat', 'csv'. Received: path={path!r}, format=None"
    )


def _parse_ratings(data: bytes, fmt: str, name: str) -> Interactions:
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n")  # Windows line ends
    end = len(data)
    while end and data[end - 1] in b" \t\n":
        end -= 1
    sep = _SEPARATORS[fmt]
    layout = sep.join(("user", "item", "rating", "timestamp"))
    if end == 0:
        raise DataFormatError(f"{name}, line 1: the file is empty; expected lines of {layout!r}.")
    start, line_no = 0, 1
    if fmt == "csv":
        newline = data.find(b"\n", 0, end)
        _check_header(data[: end if newline < 0 else newline], name)
        if newline < 0:
            raise DataFormatError(
                f"{name}, line 2: expected ratings after the header, found the end of the file."
            )
        start, line_no = newline + 1, 2
    parts = []
    while start < end:
        stop = min(start + _CHUNK_BYTES, end)
        if stop < end:  # cut after a newline so no line is split across chunks
            newline = data.rfind(b"\n", start, stop)
            stop = newline + 1 if newline >= 0 else (data.find(b"\n", stop, end) + 1 or end)
        chunk = data[start:stop] if stop < end else data[start:end] + b"\n"
        values = _parse_chunk(chunk, sep, name, line_no)
        parts.append(values)
        line_no += len(values)
        start = stop
    values = np.concatenate(parts)
    return Interactions(
        users=values[:, 0].astype(np.int64),
        items=values[:, 1].astype(np.int64),
        ratings=values[:, 2].astype(np.float32),
        timestamps=values[:, 3].astype(np.int64),
    )


def _check_header(header: bytes, name: str) -> None:
    fields = header.decode("utf-8", errors="replace").lstrip("\ufeff").split(",")
    expected = "userId,movieId,rating,timestamp"
    if len(fields) != 4:
        raise DataFormatError(
            f"{name}, line 1: expected a header of 4 columns like {expected!r}, "
            f"found {len(fields)}. Line: {_shorten(header)!r}"
        )
    if all(_is_number(field) for field in fields):
        raise DataFormatError(
            f"{name}, line 1: expected the header {expected!r}, found data. "
            f"Line: {_shorten(header)!r}"
        )


def _parse_chunk(chunk: bytes, sep: str, name: str, first_line: int) -> np.ndarray:
    """Parse whole lines (``chunk`` ends in a newline) into an (n, 4) float64 array."""
    delimiter = "\t" if sep == "::" else sep  # numpy's parser takes one-character delimiters
    text = chunk.replace(b"::", b"\t") if sep == "::" else chunk
    try:
        # numpy >= 1.23 parses text in C: several times faster than splitting in Python.
        values = np.loadtxt(
            io.BytesIO(text), delimiter=delimiter, dtype=np.float64, comments=None, ndmin=2
        )
    except ValueError:
        values = np.empty((0, 0))
    if values.shape != (text.count(b"\n"), 4):  # a bad value, field count or blank line
        _raise_for_first_bad_line(chunk, sep, name, first_line)
    ids = values[:, [0, 1, 3]]
    bad_id = (ids != np.floor(ids)) | (np.abs(ids) > _MAX_EXACT)  # NaN fails the first test
    bad = np.flatnonzero(bad_id.any(axis=1) | ~np.isfinite(values[:, 2]))
    if bad.size:
        _raise_for_line(chunk, sep, name, first_line, int(bad[0]))
    return values


def _raise_for_line(chunk: bytes, sep: str, name: str, first_line: int, index: int) -> None:
    line = chunk.split(b"\n")[index]
    problem = _line_problem(line, sep) or "could not parse the line"
    raise DataFormatError(f"{name}, line {first_line + index}: {problem}. Line: {_shorten(line)!r}")


def _raise_for_first_bad_line(chunk: bytes, sep: str, name: str, first_line: int) -> None:
    lines = chunk.split(b"\n")[:-1]
    for index, line in enumerate(lines):  # error path only: find the line to report
        if _line_problem(line, sep):
            _raise_for_line(chunk, sep, name, first_line, index)
    raise DataFormatError(
        f"{name}, lines {first_line}-{first_line + len(lines) - 1}: could not parse the ratings."
    )


def _line_problem(line: bytes, sep: str) -> str | None:
    fields = line.decode("utf-8", errors="replace").split(sep)
    if len(fields) != 4:
        return (
            f"expected 4 fields (user, item, rating, timestamp) separated by {sep!r}, "
            f"found {len(fields)}"
        )
    for field_name, field in zip(_FIELDS, fields, strict=True):
        if not _is_number(field):
            return f"{field_name} {field!r} is not a number"
        value = float(field)
        if field_name == "rating":
            if not math.isfinite(value):
                return f"rating {field!r} is not finite"
        elif not value.is_integer() or abs(value) > _MAX_EXACT:
            return f"{field_name} {field!r} is not an integer"
    return None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return "_" not in text  # float() accepts "1_000", numpy's parser does not


def _shorten(line: bytes | str, limit: int = 80) -> str:
    if isinstance(line, bytes):
        line = line.decode("utf-8", errors="replace")
    return line if len(line) <= limit else line[: limit - 3] + "..."


# --------------------------------------------------------------------------- id mapping


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
        tmp = f"{local}.tmp-{uuid.uuid4().hex}"  # readers never see a half-written file
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, local)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

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


# --------------------------------------------------------------------------- synthetic data

_MIN_PER_USER = 3  # enough for a per-user held-out split
_EXACT_ENTRIES = 2**25  # up to this many (user, item) pairs, sample exactly
_PROTOTYPE_ENTRIES = 5 * 10**7  # beyond: (prototypes x items) exact distributions to draw from
_LLOYD_STEPS = 3
_GUIDE_ENTRIES = 2**18  # (prototypes x items) per inverse-CDF table, to stay in cache
_GUIDE_STEPS = 4
_POOL_FACTOR, _POOL_EXTRA = 3, 32  # candidates drawn per user: 3 * count + 32
_BATCH_ENTRIES = 2**21  # (users x candidates) scored at once
_START_TIME = 1_577_836_800  # 2020-01-01, so timestamps look like a real log


@dataclass(frozen=True, slots=True, eq=False)
class SyntheticTruth:
    """The latent model behind :func:`synthetic_interactions`.

    A user picks item ``j`` with probability proportional to
    ``item_popularity[j] * exp(user_tastes[u] @ item_tastes[j] / temperature)`` (exactly in
    small worlds, approximately in large ones: see :func:`synthetic_interactions`).
    """

    user_tastes: np.ndarray
    """Latent taste vector of each user, (num_users, taste_dim) float32."""
    item_tastes: np.ndarray
    """Latent vector of each item, (num_items, taste_dim) float32."""
    item_popularity: np.ndarray
    """Zipf-distributed popularity of each item, (num_items,) float64 summing to 1."""
    temperature: float
    """Softness of the taste signal (the ``noise`` argument)."""

    def oracle_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """Return (user, item) vectors whose dot product is the true log-preference.

        ``user @ item.T == log(popularity) + tastes_u @ tastes_i / temperature``: the
        ranking the data was drawn from, an upper reference for a learned model.

        Example:
            >>> _, truth = synthetic_interactions(10, 20, 60, return_truth=True)
            >>> users, items = truth.oracle_vectors()
            >>> users.shape, items.shape
            ((10, 9), (20, 9))
        """
        users = np.hstack(
            [self.user_tastes / self.temperature, np.ones((len(self.user_tastes), 1))]
        )
        items = np.hstack([self.item_tastes, np.log(self.item_popularity)[:, None]])
        return users, items


@overload
def synthetic_interactions(
    num_users: int,
    num_items: int,
    num_interactions: int,
    *,
    seed: int = ...,
    taste_dim: int = ...,
    zipf_exponent: float = ...,
    noise: float = ...,
    return_truth: Literal[False] = ...,
) -> Interactions: ...


@overload
def synthetic_interactions(
    num_users: int,
    num_items: int,
    num_interactions: int,
    *,
    seed: int = ...,
    taste_dim: int = ...,
    zipf_exponent: float = ...,
    noise: float = ...,
    return_truth: Literal[True],
) -> tuple[Interactions, SyntheticTruth]: ...


def synthetic_interactions(
    num_users: int,
    num_items: int,
    num_interactions: int,
    *,
    seed: int = 0,
    taste_dim: int = 8,
    zipf_exponent: float = 1.0,
    noise: float = 0.5,
    return_truth: bool = False,
) -> Interactions | tuple[Interactions, SyntheticTruth]:
    """Generate a MovieLens-like log that a two-tower dot-product model can learn.

    Users and items get latent taste vectors (dot products have unit variance); items get a
    Zipf popularity (``1 / rank ** zipf_exponent``, ranks shuffled over item ids). Each user
    picks distinct items with probability ``∝ popularity * exp(affinity / noise)``, so
    ``noise`` is a temperature: small means taste dominates, large means popularity does.
    Sampling is exact (Gumbel-top-k) up to 2**25 user-item pairs, e.g. 6k users x 4k items;
    beyond, each user importance-samples from one of about 5e7 / num_items k-means
    prototype users' exact distributions, which blurs tastes a little.
    Users' activity is heavy-tailed with at least 3 interactions each; ratings (1 to 5)
    grow with affinity; timestamps strictly increase within a user in random item order
    and the log is sorted by time (users interleave). Ids are rows ``0..n-1``.
    Deterministic for a ``seed``; with ``return_truth=True`` also returns the
    :class:`SyntheticTruth`.

    Example:
        >>> log = synthetic_interactions(50, 40, 1_000, seed=3)
        >>> len(log), int(log.users.max()) < 50, set(log.ratings.tolist()) <= {1, 2, 3, 4, 5}
        (1000, True, True)
    """
    _check_int("num_users", num_users, 1)
    _check_int("num_items", num_items, _MIN_PER_USER)
    _check_int("num_interactions", num_interactions, _MIN_PER_USER * num_users)
    if num_interactions > num_users * num_items:
        raise InvalidConfigError(
            f"`num_interactions` must be at most num_users * num_items = "
            f"{num_users * num_items} (a user picks each item once). "
            f"Received: num_interactions={num_interactions}"
        )
    _check_int("taste_dim", taste_dim, 1)
    _check_int("seed", seed, 0)
    _check_real("zipf_exponent", zipf_exponent, allow_zero=True)
    _check_real("noise", noise, allow_zero=False)

    rng = np.random.default_rng(seed)
    scale = taste_dim**-0.25  # so that a user-item dot product has unit variance
    truth = SyntheticTruth(
        user_tastes=(rng.standard_normal((num_users, taste_dim)) * scale).astype(np.float32),
        item_tastes=(rng.standard_normal((num_items, taste_dim)) * scale).astype(np.float32),
        item_popularity=_zipf_popularity(rng, num_items, zipf_exponent),
        temperature=float(noise),
    )
    counts = _interactions_per_user(rng, num_users, num_items, num_interactions)
    items = _choose_items(rng, truth, counts)
    users = np.repeat(np.arange(num_users, dtype=np.int64), counts)
    affinity = np.einsum("nd,nd->n", truth.user_tastes[users], truth.item_tastes[items])
    # Around MovieLens' 3.6 stars on average, higher for items closer to the user's taste.
    stars = np.rint(3.6 + (affinity - affinity.mean()) + 0.6 * rng.standard_normal(len(items)))
    ratings = np.clip(stars, 1, 5).astype(np.float32)
    timestamps = _timestamps(rng, counts)
    # Items may come in preference order: shuffle them within each user before the times.
    shuffled = np.argsort(users + rng.random(len(items)))  # users are grouped: stays in group
    order = np.argsort(timestamps, kind="stable")
    log = Interactions(
        users[order], items[shuffled][order], ratings[shuffled][order], timestamps[order]
    )
    return (log, truth) if return_truth else log


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise InvalidConfigError(
            f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}"
        )


def _check_real(name: str, value: Any, *, allow_zero: bool) -> None:
    ok = (
        isinstance(value, int | float | np.integer | np.floating)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value >= 0 if allow_zero else value > 0)
    )
    if not ok:
        bound = "non-negative" if allow_zero else "positive"
        raise InvalidConfigError(f"`{name}` must be a {bound} number. Received: {name}={value!r}")


def _zipf_popularity(rng: np.random.Generator, num_items: int, exponent: float) -> np.ndarray:
    weights = np.arange(1, num_items + 1, dtype=np.float64) ** -exponent
    popularity = weights[rng.permutation(num_items)]  # popular items anywhere in the id range
    return popularity / popularity.sum()


def _interactions_per_user(
    rng: np.random.Generator, num_users: int, num_items: int, total: int
) -> np.ndarray:
    activity = rng.lognormal(0.0, 1.0, num_users)  # a few heavy users, many light ones
    counts = np.full(num_users, _MIN_PER_USER, dtype=np.int64)
    extra = total - counts.sum()
    while extra > 0:  # hand out the rest by activity; users who saw every item are full
        room = num_items - counts
        weights = activity * (room > 0)
        added = np.minimum(rng.multinomial(extra, weights / weights.sum()), room)
        counts += added
        extra -= added.sum()
    return counts


def _choose_items(
    rng: np.random.Generator, truth: SyntheticTruth, counts: np.ndarray
) -> np.ndarray:
    """Sample ``counts[u]`` distinct items per user, grouped by user (in no useful order)."""
    offsets = np.concatenate(([0], np.cumsum(counts)))
    items = np.empty(offsets[-1], dtype=np.int64)
    users = np.arange(len(counts))
    if len(counts) * len(truth.item_popularity) > _EXACT_ENTRIES:
        users = _choose_by_prototypes(rng, truth, counts, items, offsets)
    _choose_exact(rng, truth, users, counts, items, offsets)
    return items


def _choose_exact(
    rng: np.random.Generator,
    truth: SyntheticTruth,
    users: np.ndarray,
    counts: np.ndarray,
    items: np.ndarray,
    offsets: np.ndarray,
) -> None:
    """Gumbel-top-k over the whole catalogue: exact sampling without replacement."""
    num_items = len(truth.item_popularity)
    log_popularity = np.log(truth.item_popularity).astype(np.float32)
    users = users[np.argsort(counts[users], kind="stable")]  # similar counts per batch
    step = max(1, _BATCH_ENTRIES // num_items)
    for start in range(0, users.size, step):
        batch = users[start : start + step]
        keys = (truth.user_tastes[batch] @ truth.item_tastes.T) / np.float32(truth.temperature)
        keys += log_popularity
        keys -= np.log(_exponential(rng, keys.shape))  # + Gumbel noise
        candidates = np.broadcast_to(np.arange(num_items), keys.shape)
        _write_top(keys, candidates, offsets[batch], counts[batch], items)


def _choose_by_prototypes(
    rng: np.random.Generator,
    truth: SyntheticTruth,
    counts: np.ndarray,
    items: np.ndarray,
    offsets: np.ndarray,
) -> np.ndarray:
    """Importance-sample each user's items from a nearby prototype user's exact distribution.

    Prototypes are k-means centres of the tastes. A user draws a pool from its prototype's
    distribution ``q``; a distinct candidate drawn ``m`` times gets the weight
    ``m * p_user / q = m * exp((taste - prototype) @ item / temperature)`` and Gumbel-top-k
    over the pool picks the items. Returns the users whose pool held too few distinct items.
    """
    num_items = len(truth.item_popularity)
    tastes = truth.user_tastes
    prototypes = _kmeans(rng, tastes, max(1, _PROTOTYPE_ENTRIES // num_items))
    nearest = _nearest(tastes, prototypes)
    by_prototype = np.argsort(nearest, kind="stable")
    bounds = np.searchsorted(nearest[by_prototype], np.arange(len(prototypes) + 1))
    step = max(1, _GUIDE_ENTRIES // num_items)
    leftovers = [np.empty(0, dtype=np.int64)]
    for first in range(0, len(prototypes), step):
        sampler = _InverseCdf(truth, prototypes[first : first + step])
        users = by_prototype[bounds[first] : bounds[min(first + step, len(prototypes))]]
        leftovers.append(
            _choose_from_pools(
                rng,
                truth,
                sampler,
                users,
                nearest[users] - first,
                prototypes[nearest[users]],
                counts,
                items,
                offsets,
            )
        )
    return np.concatenate(leftovers)


def _choose_from_pools(
    rng: np.random.Generator,
    truth: SyntheticTruth,
    sampler: _InverseCdf,
    users: np.ndarray,
    rows: np.ndarray,
    prototypes: np.ndarray,
    counts: np.ndarray,
    items: np.ndarray,
    offsets: np.ndarray,
) -> np.ndarray:
    """Draw each user's pool from its prototype row, pick its items; return the short pools.

    Pools are ragged (one segment per user) so heavy and light users waste no padding.
    """
    need = counts[users]
    pool = _POOL_FACTOR * need + _POOL_EXTRA
    owner = np.repeat(np.arange(users.size), pool)
    uniform = np.sort(owner + rng.random(owner.size)) - owner  # sorted within each user
    uniform = np.minimum(uniform, 1.0 - 2.0**-53)  # owner + r may round up to owner + 1
    draws = sampler.draw(rows[owner], uniform)  # so draws are sorted within each user too
    new_run = np.ones(draws.size, dtype=bool)
    new_run[1:] = (draws[1:] != draws[:-1]) | (owner[1:] != owner[:-1])
    run_starts = np.flatnonzero(new_run)
    owner, candidates = owner[run_starts], draws[run_starts]
    residual = (truth.user_tastes[users] - prototypes) / np.float32(truth.temperature)
    keys = np.log(np.diff(run_starts, append=draws.size).astype(np.float32))
    keys += np.einsum("nd,nd->n", residual[owner], truth.item_tastes[candidates])
    keys -= np.log(_exponential(rng, keys.shape))  # + Gumbel noise
    enough = np.bincount(owner, minlength=users.size) >= need
    order = np.lexsort((-keys, owner))
    owner, candidates = owner[order], candidates[order]
    rank = np.arange(owner.size) - np.searchsorted(owner, owner)
    take = (rank < need[owner]) & enough[owner]
    items[offsets[users[owner[take]]] + rank[take]] = candidates[take]
    return users[~enough]


class _InverseCdf:
    """Draws items from ``popularity * exp(prototype @ items / temperature)``, per prototype.

    A guide table (first item of each of ``num_items`` equal probability buckets) replaces a
    binary search: a draw looks up its bucket and steps forward about one item on average.
    """

    def __init__(self, truth: SyntheticTruth, prototypes: np.ndarray) -> None:
        num_items = len(truth.item_popularity)
        logits = np.log(truth.item_popularity) + (
            prototypes @ truth.item_tastes.T / truth.temperature
        )
        cdf = np.cumsum(np.exp(logits - logits.max(axis=1, keepdims=True)), axis=1)
        cdf /= cdf[:, -1:]  # the last value is exactly 1, above every draw
        bucket = np.minimum((cdf * num_items).astype(np.int64), num_items - 1)
        bucket += np.arange(len(prototypes))[:, None] * num_items
        below = np.bincount(bucket.ravel(), minlength=cdf.size)
        self._guide = np.cumsum(below) - below  # items whose cdf lies in earlier buckets
        self._cdf = cdf.ravel()
        # Increasing over all rows (row r spans (r, r + 1]): a binary search for long scans.
        self._cdf_with_row = (cdf + np.arange(len(prototypes))[:, None]).ravel()
        self._num_items = num_items

    def draw(self, rows: np.ndarray, uniform: np.ndarray) -> np.ndarray:
        """The item at quantile ``uniform`` (in [0, 1)) of each prototype row in ``rows``."""
        offset = rows * self._num_items
        flat = self._guide[offset + (uniform * self._num_items).astype(np.int64)]
        behind = np.flatnonzero(self._cdf[flat] <= uniform)
        for _ in range(_GUIDE_STEPS):  # most buckets hold an item or two
            flat[behind] += 1
            behind = behind[self._cdf[flat[behind]] <= uniform[behind]]
        if behind.size:  # buckets crowded with improbable items: binary search
            flat[behind] = np.searchsorted(
                self._cdf_with_row, uniform[behind] + rows[behind], side="right"
            )
        return flat - offset


def _kmeans(rng: np.random.Generator, points: np.ndarray, k: int) -> np.ndarray:
    """A few Lloyd steps on a sample of ``points``: centres that keep residuals small."""
    sample = points[rng.choice(len(points), min(len(points), 20 * k), replace=False)]
    centres = sample[rng.choice(len(sample), min(len(sample), k), replace=False)]
    for _ in range(_LLOYD_STEPS):
        nearest = _nearest(sample, centres)
        sizes = np.bincount(nearest, minlength=len(centres))[:, None]
        sums = np.zeros_like(centres)
        np.add.at(sums, nearest, sample)
        centres = np.where(sizes > 0, sums / np.maximum(sizes, 1), centres).astype(np.float32)
    return centres


def _nearest(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of the nearest centre (Euclidean) of each point, in batches."""
    half_norms = 0.5 * np.einsum("kd,kd->k", centres, centres)
    step = max(1, _BATCH_ENTRIES // len(centres))
    return np.concatenate(
        [
            np.argmax(points[start : start + step] @ centres.T - half_norms, axis=1)
            for start in range(0, len(points), step)
        ]
    )


def _exponential(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Standard exponential draws, never 0 (``-log`` of them is Gumbel noise)."""
    draws = rng.standard_exponential(shape, dtype=np.float32)
    return np.maximum(draws, np.finfo(np.float32).tiny)


def _write_top(
    keys: np.ndarray,
    candidates: np.ndarray,
    starts: np.ndarray,
    counts: np.ndarray,
    items: np.ndarray,
) -> None:
    """Write row ``r``'s ``counts[r]`` highest-key candidates at ``items[starts[r]:]``."""
    if counts.size == 0:
        return
    top = int(counts.max())
    if top < keys.shape[1]:
        best = np.argpartition(-keys, top - 1, axis=1)[:, :top]
        keys = np.take_along_axis(keys, best, axis=1)
        candidates = np.take_along_axis(candidates, best, axis=1)
    if counts.min() < top:  # rows that need fewer keep their best
        order = np.argsort(-keys, axis=1, kind="stable")[:, :top]
        candidates = np.take_along_axis(candidates, order, axis=1)
    keep = np.arange(top)[None, :] < counts[:, None]
    items[_segment_positions(starts, counts)] = candidates[:, :top][keep]


def _segment_positions(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenate ``arange(start, start + length)`` for each pair, vectorized."""
    total = int(lengths.sum())
    if total == 0:
        return np.empty(0, dtype=np.int64)
    ends = np.cumsum(lengths)
    return np.repeat(starts - (ends - lengths), lengths) + np.arange(total)


def _timestamps(rng: np.random.Generator, counts: np.ndarray) -> np.ndarray:
    """Strictly increasing times per user (grouped by user), users starting at random."""
    total = int(counts.sum())
    user_start = rng.integers(0, 2 * 365 * 86_400, counts.size)  # joined within two years
    gaps = 1 + rng.exponential(6 * 3600, total).astype(np.int64)  # hours apart, never 0
    running = np.cumsum(gaps)
    first = np.concatenate(([0], np.cumsum(counts)[:-1]))
    before = np.repeat(running[first] - gaps[first], counts)  # cumsum reset at each user
    return _START_TIME + np.repeat(user_start, counts) + running - before


# --------------------------------------------------------------------------- split


def train_test_split(
    interactions: Interactions, *, holdout: int = 1
) -> tuple[Interactions, Interactions]:
    """Hold out each user's latest ``holdout`` interactions as the test set.

    "Latest" is by timestamp, ties broken by position in ``interactions`` (later position is
    later). Users with ``holdout`` or fewer interactions keep them all in train. Both parts
    keep the original order.

    Example:
        >>> log = Interactions([1, 1, 1, 2], [10, 11, 12, 10], [5, 4, 3, 2], [3, 1, 3, 9])
        >>> train, test = train_test_split(log)
        >>> train.items.tolist(), test.items.tolist()
        ([10, 11, 10], [12])
    """
    if not isinstance(interactions, Interactions):
        raise InvalidConfigError(
            "`interactions` must be an Interactions. "
            f"Received: interactions of type {type(interactions).__name__}"
        )
    _check_int("holdout", holdout, 1)
    n = len(interactions)
    order = np.lexsort((interactions.timestamps, interactions.users))  # stable: ties by position
    users = interactions.users[order]
    starts = np.flatnonzero(np.concatenate(([True], users[1:] != users[:-1])))
    sizes = np.diff(np.append(starts, n))
    from_end = np.repeat(starts + sizes, sizes) - np.arange(n)  # 1 for a user's latest
    is_test = np.empty(n, dtype=bool)
    is_test[order] = (from_end <= holdout) & (np.repeat(sizes, sizes) > holdout)
    return interactions.take(~is_test), interactions.take(is_test)
