"""Exceptions a user can act on. Every message names what is wrong and what would be right."""


class DlmError(Exception):
    """Base class of every error dlm raises on purpose."""


class ConfigError(DlmError, ValueError):
    """A pipeline configuration (YAML, dict or override) is malformed or invalid."""


class ComponentError(DlmError, LookupError):
    """A component name is unknown, ambiguous, or its plugin is broken."""


class PluginError(ComponentError):
    """A plugin failed to import or registered something that is not a component of its group."""


class CompositionError(DlmError, ValueError):
    """Components that are each valid cannot work together (e.g. a cache the model cannot serve)."""


class CheckpointError(DlmError, ValueError):
    """A checkpoint directory is missing files or tensors, or holds tensors of the wrong shape."""


class InputError(DlmError, ValueError):
    """Prompts or token ids given to ``generate`` are unusable (too long, empty, no tokenizer, ...)."""


class DecodingError(DlmError, RuntimeError):
    """A decoding step broke an invariant the loop depends on (e.g. committed nothing)."""
