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
from dlm.pipeline import GenerationOutput, Pipeline
from dlm.state import Commit, GenerationState, Window

__all__ = [
    "Pipeline",
    "GenerationOutput",
    "GenerationState",
    "Window",
    "Commit",
    "DlmError",
    "ConfigError",
    "ComponentError",
    "PluginError",
    "CompositionError",
    "CheckpointError",
    "InputError",
    "DecodingError",
]
__version__ = "0.1.0"
