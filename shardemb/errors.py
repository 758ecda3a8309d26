"""shardemb's exception hierarchy.

One root, :class:`ShardembError`; every leaf also inherits the standard exception a caller
would naturally catch (``ValueError``, ``KeyError``, ``FileNotFoundError``, ...), so
``except ValueError`` keeps working for code that does not know shardemb.

Exceptions cross process boundaries (shard actors raise them, the router re-raises them),
so each keeps a single string argument and pickles with the default ``__reduce__``.

Example:
    >>> from shardemb.errors import InvalidIdsError, ShardembError
    >>> issubclass(InvalidIdsError, ValueError) and issubclass(InvalidIdsError, ShardembError)
    True
"""

from __future__ import annotations

__all__ = [
    "CapacityError",
    "CheckpointCorruptError",
    "CheckpointError",
    "CheckpointNotFoundError",
    "ClusterConnectionError",
    "DataFormatError",
    "InvalidConfigError",
    "InvalidGradientError",
    "InvalidIdsError",
    "ShardError",
    "ShardRestartedError",
    "ShardTimeoutError",
    "ShardUnavailableError",
    "ShardembError",
    "TableExistsError",
    "TableNotFoundError",
]


class ShardembError(Exception):
    """Root of every error shardemb raises on purpose."""


class InvalidConfigError(ShardembError, ValueError):
    """A constructor or function argument (sizes, names, optimizer, partition...) is invalid."""


class InvalidIdsError(ShardembError, ValueError):
    """Ids are out of ``[0, vocab_size)``, not integers, or of a rank the call cannot take."""


class InvalidGradientError(ShardembError, ValueError):
    """Gradients have the wrong shape or dtype, or hold NaN/Inf."""


class TableExistsError(ShardembError, ValueError):
    """A table with this name already exists on the Ray cluster."""


class TableNotFoundError(ShardembError, KeyError):
    """No table with this name exists (or it was closed)."""

    def __str__(self) -> str:  # KeyError would quote the message otherwise
        return str(self.args[0]) if self.args else ""


class CapacityError(ShardembError, ValueError):
    """The table, with its optimizer slots, does not fit the cluster's resources."""


class ClusterConnectionError(ShardembError, ConnectionError):
    """The Ray cluster at the given address could not be reached."""


class ShardError(ShardembError, RuntimeError):
    """A shard raised an unexpected error while serving a request."""


class ShardUnavailableError(ShardembError, RuntimeError):
    """A shard actor died or cannot be reached, and could not be brought back."""


class ShardRestartedError(ShardUnavailableError):
    """A shard died and was restarted from the latest committed checkpoint: pushes it had
    applied since that checkpoint are lost. The message names the shard and the step."""


class ShardTimeoutError(ShardembError, TimeoutError):
    """A shard did not answer within the call's timeout."""


class CheckpointError(ShardembError):
    """Base of checkpoint errors."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No committed checkpoint exists at the path."""

    def __str__(self) -> str:  # OSError formats its args otherwise
        return str(self.args[0]) if self.args else ""


class CheckpointCorruptError(CheckpointError, ValueError):
    """A checkpoint is incomplete or damaged: missing chunk, wrong shape, bad checksum,
    unknown format version, or it belongs to another table."""


class DataFormatError(ShardembError, ValueError):
    """An input data file (ratings) is malformed; the message names the file and line."""
