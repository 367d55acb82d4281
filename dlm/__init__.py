"""dlm: fast inference of diffusion language models, as four swappable components.

``Pipeline`` composes a model adapter, a diffusion-iteration manager, a decoding strategy and a KV-cache
manager from a YAML file; each is found by name through Python entry points.
"""

from dlm.errors import (
    CheckpointError,
    ComponentError,
    CompositionError,
    ConfigError,
    DecodingError,
    DlmError,
    InputError,
    PluginError,
)
from dlm._compat import moved
from dlm.messages import PLUGIN_API
from dlm.pipeline import GenerationOutput, Pipeline
from dlm.state import GenerationState

__getattr__ = moved("dlm", {"Window": "dlm.messages:Window", "Commit": "dlm.messages:Commit"})

__all__ = [
    "Pipeline",
    "GenerationOutput",
    "GenerationState",
    "PLUGIN_API",
    "DlmError",
    "ConfigError",
    "ComponentError",
    "PluginError",
    "CompositionError",
    "CheckpointError",
    "InputError",
    "DecodingError",
]
__version__ = "0.2.0"
