"""The settings of a ``shardemb demo`` run: plain values, no TensorFlow (the CLI reads
its defaults to build its flags)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["DEFAULT_LEARNING_RATES", "DemoConfig"]

#: Learning rates that train the synthetic default well in a few epochs (measured).
DEFAULT_LEARNING_RATES = {"sgd": 1.0, "adagrad": 1.0, "adam": 0.01}


@dataclass
class DemoConfig:
    """Everything a run depends on (saved in results.json)."""

    data: str | None = None
    format: str | None = None
    users: int = 6000
    items: int = 4000
    interactions: int = 300_000
    dim: int = 32
    epochs: int = 5
    batch_size: int = 1024
    learning_rate: float | None = None
    optimizer: str = "adagrad"
    temperature: float = 0.1
    num_shards: int = 2
    backend: str = "ray"
    address: str | None = None
    out: str = "runs/demo"
    resume: bool = False
    restore_shards: int | None = None
    compare_keras: bool = False
    eval_users: int = 5000
    seed: int = 0
    keep_checkpoints: int = 2
    dynamic: bool = False
    capacity_ratio: float = 0.98
    """With ``dynamic``: each table's capacity as a fraction of its distinct ids."""
    extra: dict = field(default_factory=dict)
