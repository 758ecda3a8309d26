"""Argument checks shared by every layer: one wording for every message.

Messages follow Keras: they name the argument and repeat what was received, e.g.
"`dim` must be a positive integer. Received: dim=-3 (of type int)".
"""

from __future__ import annotations

import numpy as np

from shardemb.errors import InvalidConfigError


def is_int(value: object) -> bool:
    """True for Python and numpy integers; False for bools (which are ints to Python)."""
    return not isinstance(value, bool) and isinstance(value, int | np.integer)


def check_positive_int(name: str, value: object, *, optional: bool = False) -> None:
    """Raise :class:`InvalidConfigError` unless ``value`` is an integer >= 1 (or None when
    ``optional``)."""
    if optional and value is None:
        return
    if not is_int(value) or value <= 0:
        raise InvalidConfigError(
            f"`{name}` must be a positive integer{' or None' if optional else ''}. "
            f"Received: {name}={value!r} (of type {type(value).__name__})"
        )


def check_int(
    name: str, value: object, *, minimum: int, maximum: int | None = None, optional: bool = False
) -> None:
    """Raise :class:`InvalidConfigError` unless ``minimum <= value <= maximum``."""
    if optional and value is None:
        return
    if not is_int(value) or value < minimum or (maximum is not None and value > maximum):
        bound = (
            f"an integer >= {minimum}"
            if maximum is None
            else f"an integer in [{minimum}, {maximum}]"
        )
        raise InvalidConfigError(
            f"`{name}` must be {bound}{' or None' if optional else ''}. "
            f"Received: {name}={value!r} (of type {type(value).__name__})"
        )
