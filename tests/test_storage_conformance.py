"""Every shard storage passes the same suite (shardemb.testing.StorageConformance)."""

from shardemb.testing import StorageConformance


class TestNumpyStorage(StorageConformance):
    storage = "numpy"
    device = "cpu"


class TestTensorflowStorage(StorageConformance):
    """TensorFlow variables; on a machine without a GPU the same code runs on /CPU:0."""

    storage = "tensorflow"
    device = "cpu"


def _has_gpu() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


import pytest  # noqa: E402


@pytest.mark.skipif(not _has_gpu(), reason="no GPU visible to TensorFlow")
class TestTensorflowGpuStorage(StorageConformance):
    """Rows in GPU memory (runs where a GPU is present)."""

    storage = "tensorflow"
    device = "gpu"
