"""Shared fixtures: one Ray runtime for the whole test session (start-up costs seconds)."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

_names = itertools.count()


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray runtime with two CPUs, started once, shut down at the end."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def table_name(request):
    """A table name unique within the session."""
    base = "".join(c if c.isalnum() else "-" for c in request.node.name)[:60]
    return f"t{next(_names)}-{base}"


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
