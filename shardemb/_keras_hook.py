"""Registers :class:`~shardemb.ShardedEmbedding` with Keras as soon as Keras is imported.

``import shardemb`` must stay light (shard actors import it and never need TensorFlow), so
the Keras layer is not imported with it. But ``keras.models.load_model`` finds a custom
class only if it was registered, i.e. if its module ran. So: if Keras is already imported,
import the layer now; otherwise import it right after Keras's own import finishes.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

_LAYER_MODULE = "shardemb.keras.layer"


def _import_layer() -> None:
    # Already there (or being imported: it imports keras itself): it registers on its own.
    if _LAYER_MODULE not in sys.modules:
        importlib.import_module(_LAYER_MODULE)


class _AfterKerasImport(importlib.abc.MetaPathFinder):
    """Wraps the loader of the top-level ``keras`` module so that, once it has run, the
    shardemb Keras modules are imported (and their classes registered)."""

    def find_spec(self, name, path=None, target=None):
        if name != "keras":
            return None
        sys.meta_path.remove(self)  # one shot; also keeps find_spec below from recursing
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            _import_layer()

        loader.exec_module = exec_then_register
        return spec


def install() -> None:
    """Register now if Keras is loaded, else once it is."""
    if "keras" in sys.modules:
        _import_layer()
    elif not any(isinstance(f, _AfterKerasImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterKerasImport())
