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
    "ConfigDeserializationError",
    "DataFormatError",
    "InvalidConfigError",
    "InvalidGradientError",
    "InvalidIdsError",
    "ShardError",
    "ShardNotLoadedError",
    "ShardRestartedError",
    "ShardTimeoutError",
    "ShardUnavailableError",
    "ShardembError",
    "TableExistsError",
    "TableFullError",
    "TableNotFoundError",
]


class ShardembError(Exception):
    """Root of every error shardemb raises on purpose."""


class InvalidConfigError(ShardembError, ValueError):
    """A constructor or function argument (sizes, names, optimizer, partition...) is invalid."""


class ConfigDeserializationError(InvalidConfigError, TypeError):
    """A saved layer config could not be turned back into a layer (``from_config``,
    ``load_model``): a ``TypeError`` too, as Keras raises for its own layers."""


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


class TableFullError(ShardembError, RuntimeError):
    """A dynamic table created with ``eviction=None`` has no room for new keys; the message
    names the shard, its capacity and the fix. Nothing of the refused call was applied."""


class ClusterConnectionError(ShardembError, ConnectionError):
    """The Ray cluster at the given address could not be reached."""


class ShardError(ShardembError, RuntimeError):
    """A shard raised an unexpected error while serving a request."""


class ShardUnavailableError(ShardembError, RuntimeError):
    """A shard actor died or cannot be reached, and could not be brought back."""


class ShardRestartedError(ShardUnavailableError):
    """A shard died and was restarted from the latest committed checkpoint: pushes it had
    applied since that checkpoint are lost. The message names the shard and the step."""


class ShardNotLoadedError(ShardUnavailableError):
    """A restarted shard has not loaded its rows from a checkpoint (its reload failed or
    has not run yet): it refuses lookups, pushes, reads and saves until it has, so its
    rows are never served as zeros. The next call tries the reload again."""


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
