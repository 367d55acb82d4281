"""Model adapters: a checkpoint family, loaded from a local directory, runs the cache manager's plans.

The public API for plugin authors: :class:`ModelAdapter` (the interface; its :class:`~dlm.messages.ModelCapabilities` come from :mod:`dlm.messages`),
:class:`TransformerAdapter` + :func:`load_transformer` (a family built on dlm's own
:class:`~dlm.models.layers.Transformer` needs only a config translation and a tensor-name map), and
:class:`KVBuffer` (the preallocated K/V store).
"""

from dlm._compat import moved
from dlm.models.base import ModelAdapter
from dlm.models.kv import KVBuffer
from dlm.models.transformer import TransformerAdapter, load_transformer

__all__ = ["ModelAdapter", "TransformerAdapter", "load_transformer", "KVBuffer"]
__getattr__ = moved("dlm.models", {"ModelCapabilities": "dlm.messages:ModelCapabilities"})
