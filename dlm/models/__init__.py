"""Model adapters: a checkpoint family, loaded from a local directory, runs the cache manager's plans.

The public API for plugin authors: :class:`ModelAdapter` and :class:`ModelCapabilities` (the interface),
:class:`TransformerAdapter` + :func:`load_transformer` (a family built on dlm's own
:class:`~dlm.models.layers.Transformer` needs only a config translation and a tensor-name map), and
:class:`KVBuffer` (the preallocated K/V store).
"""

from dlm.messages import ModelCapabilities
from dlm.models.base import ModelAdapter
from dlm.models.kv import KVBuffer
from dlm.models.transformer import TransformerAdapter, load_transformer

__all__ = ["ModelAdapter", "ModelCapabilities", "TransformerAdapter", "load_transformer", "KVBuffer"]
