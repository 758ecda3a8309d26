"""Reading MovieLens ratings files (u.data, ratings.dat, ratings.csv) into :class:`Interactions`.

Pure numpy (no Ray, TensorFlow or Keras) and vectorized: lines are parsed by numpy in chunks;
only the error path looks at single lines.
"""

from __future__ import annotations

import io
import math
import os

import fsspec
import numpy as np

from shardemb.errors import DataFormatError, InvalidConfigError
from shardemb.recsys.interactions import Interactions

__all__ = ["load_ratings"]

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


def _shorten(line: bytes, limit: int = 80) -> str:
    text = line.decode("utf-8", errors="replace")
    return text if len(text) <= limit else text[: limit - 3] + "..."
