"""The messages the four components exchange, in one neutral package that imports no component.

This package is the one import home of every message type (versioned as :data:`PLUGIN_API`; CHANGELOG.md lists every change).
One step of the loop (:meth:`dlm.pipeline.Pipeline.step`) passes these values around:

- the iteration manager emits a :class:`Window`: which rows and columns to denoise now, and each row's place
  in the schedule (:class:`Geometry`: its block, its step inside the block, its block's columns);
- the decoding strategy may :meth:`~dlm.decoding.base.DecodingStrategy.prepare` it: ask for the logits of a
  wider span (:meth:`Window.widen`) or attach an extension (:class:`Candidates`: several canvases of a row
  in one forward);
- the cache manager emits a :class:`ForwardPlan` (which columns to compute, which K/V to reuse, which
  logits to return), built with what a :class:`CacheEnv` gives it (the model's capabilities, KV stores);
- the model adapter (described by its :class:`ModelCapabilities`) runs the plan and returns logits;
- the decoding strategy answers with a :class:`Commit`, which :meth:`dlm.state.GenerationState.commit` checks
  and writes into the canvas.

**A small core and typed extensions.** Each message holds the fields every component reads; what one family
of algorithms needs travels as an *extension*: a small frozen dataclass attached with :meth:`Message.extend`
and read with :meth:`Message.get` (``window.get(SubBlocks)``; None when absent). A new family defines its own
extension type next to its components instead of adding a field that every component must know.

Extensions defined here, for the built-in families: :class:`SubBlocks` and :class:`Reorder` (windows),
:class:`Candidates`, :class:`ThresholdFloor` and :class:`BlocksInFlight` (windows), :class:`Drafts`, :class:`Finish`, :class:`Keep`,
:class:`Edits` and :class:`Idle` (commits), :class:`Ordered`, :class:`CandidateBatch`, :class:`ReadRows`,
:class:`SoftInputs` and :class:`LayerPlans` (plans; a window may carry a :class:`SoftInputs` to the plan made for
it). A :class:`ModelInput` (:class:`NoiseLevel`) is attached to a window and travels to the plan
(:meth:`ForwardPlan.for_window`): something the model reads.

Every component imports this package; it imports only torch (and :mod:`dlm.memory`, which imports only torch), so
no component depends on another. Its modules follow the loop: :mod:`~dlm.messages.base` (capabilities, stores,
:class:`Message`), :mod:`~dlm.messages.window`, :mod:`~dlm.messages.plan` (with :mod:`~dlm.messages.layers`, the
per-layer plans) and :mod:`~dlm.messages.commit`; import every name from ``dlm.messages``.
"""

from __future__ import annotations

from dlm.messages.base import PLUGIN_API, CacheEnv, FeatureStore, KVStore, Message, ModelCapabilities
from dlm.messages.commit import Commit, Drafts, Edits, Finish, Idle, Keep
from dlm.messages.layers import LayerInput, LayerPlans, LayerPolicy, LayerStep
from dlm.messages.plan import (CandidateBatch, ForwardPlan, ModelInput, NoiseLevel, Ordered, ReadRows,
                               SoftInputs)
from dlm.messages.window import BlocksInFlight, Candidates, Geometry, Reorder, SubBlocks, ThresholdFloor, Window
from dlm.memory import SoftStore

__all__ = [
    "PLUGIN_API", "ModelCapabilities", "KVStore", "CacheEnv", "Message", "Geometry", "Window", "SubBlocks",
    "Reorder", "Candidates", "BlocksInFlight", "ThresholdFloor", "Commit", "Drafts", "Finish", "Keep", "Edits", "Idle",
    "ForwardPlan", "Ordered", "CandidateBatch", "ReadRows", "ModelInput", "NoiseLevel",
    "SoftInputs", "SoftStore", "FeatureStore", "LayerInput", "LayerStep", "LayerPolicy", "LayerPlans"]
