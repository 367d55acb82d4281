"""Contract test kit: check a component against the contract of its interface, on tiny random checkpoints.

The same checks run over every registered component in dlm's own suite (tests/test_contracts.py), and a
plugin author calls them from the plugin's tests::

    from dlm.testing.contracts import check_decoding_strategy, contract_test

    def test_my_strategy_keeps_the_contract():
        check_decoding_strategy(MyStrategy, {"gamma": 0.5})   # raises ContractViolation naming each failure

    test_contract = contract_test("decoding", MyStrategy, {"gamma": 0.5})  # or: one pytest case per check

**Plugin API version.** The kit checks components against plugin API :data:`dlm.messages.PLUGIN_API`
(``"2.0"``: ``select(state, window, logits, generator)``, run memory returned by ``start`` and kept on the
state, per-row window geometry, message extensions, ``model.forward(state, plan)``, ``cache.start(state,
env)``; CHANGELOG.md lists every change). Every :class:`ContractReport` carries the version in ``api``, and
the failure messages of :func:`check_component` and :func:`contract_test` name it, so a report says what a
component was checked against.

What each kind must do (one named check each, see :data:`CHECKS`):

- every kind: ``config`` — the ``Config`` is a frozen pydantic model; ``model_dump`` → ``model_validate``
  gives an equal config (also through JSON, as YAML does) and an unknown field is rejected;
  ``deterministic`` — the same seed gives the same result; ``batched`` — a left-padded batch gives what
  each prompt gives alone (row r of a batch draws random numbers from stream ``seed + r``, see dlm.rng);
  ``concurrent`` — two generations through ONE pipeline object at once (their steps interleaved with
  ``Pipeline.start``/``Pipeline.step`` on two states, and two threads calling ``generate``) each give what
  they give alone, and the component object keeps no per-run state; ``joins`` — for a component declaring
  ``joinable = True`` (and for every model adapter: the engine joins rows whatever the model), rows joining
  a running generation after several different steps give the tokens and NFE they give alone
  (:mod:`dlm.testing.joins`); a component with ``joinable = False`` gets "skipped", with that reason;
- decoding: ``commits`` — on synthetic logits (MASK-favouring, flat, peaked, -inf entries, float32/64/bf16)
  and windows whose rows are at different steps and blocks, it commits at least one position per row that
  has an eligible one, only eligible positions, never MASK, tokens inside the vocabulary (a strategy that
  widens its logits span gets logits for the span); ``memory`` — the strategy object holds only its config
  (no generation changes its attributes: run memory is returned by ``start`` and kept on the state), and a
  second generation with it gives what a fresh strategy gives; ``batched`` also proves a row's memory never
  influences another row; ``generation`` — it drives a real generation to the end;
- cache: ``plans`` — plans stay within the canvas, name the window's rows, compute every output the
  window's logits span needs (a column range or per-row column sets) and return that span, and the model's
  writes into the KV store stay inside the planned rows and stored columns (write bounds, per row or
  shared); the cache object keeps no per-run state; ``exact_at_refresh`` — a refresh forward (and any
  uncached whole-canvas forward) gives the logits of a full no-cache forward;
- iteration: ``windows`` — windows lie in the generation region, name rows that are not done, only masked
  positions are eligible, and the geometry is per row (``[b]`` long host tensors); ``never_rewrites`` —
  prompt and committed tokens never change (a finished row may only fill the columns after its first end
  token with end tokens); ``terminates``;
- model: ``capabilities``; ``logits`` — shape [rows, S, vocab] over the plan's logits span, finite, and a
  wider span agrees with the window's; ``kv_forward`` — a forward through a KV store, and a block-only
  forward reading it, equal the plain forward; ``soft_inputs`` — for an adapter declaring
  ``capabilities.soft_inputs``: a plan's ``SoftInputs`` with an empty store changes nothing, a record stores
  finite embeddings at exactly the marked columns (each row's as alone, the returned logits unchanged), and
  feeding them changes the logits (skipped for an adapter not declaring them).

Everything runs in float64 on CPU with 2-layer d=32 LLaDA-layout checkpoints written by
:func:`dlm.testing.make_llada_checkpoint` into a temporary directory, and 16-token generations. A cache or
iteration manager that refuses the LLaDA model gets the first of :data:`FAMILIES` it accepts (Fast-dLLM v2
and Dream in Qwen2's layout, then ``qwen2``, a plain causal Qwen2 config, for causal decoders, and last the
noise-canvas model, DiffusionGemma's layout written by :mod:`dlm.tools.diffusion_gemma_checkpoints` without
transformers, for components of revisable canvases such as ``canvases``; then ``llada_d2f``, the tiny LLaDA with
D2F's block-causal mask, for ``d2f``). A decoding strategy that declares it
finishes canvases (``entropy_bound``) runs its generation checks on that model under ``canvases`` too.

The kit is a package with one module per concern: :mod:`~dlm.testing.contracts.core` (violations,
outcomes, reports, shared settings), :mod:`~dlm.testing.contracts.fixtures` (tiny checkpoints and models),
:mod:`~dlm.testing.contracts.probes` (helpers shared by several kinds, and the ``config`` check),
:mod:`~dlm.testing.contracts.decoding`, :mod:`~dlm.testing.contracts.cache`,
:mod:`~dlm.testing.contracts.iteration`, :mod:`~dlm.testing.contracts.model` (the checks of each kind) and
:mod:`~dlm.testing.contracts.registry` (:data:`CHECKS` and the entry points). Import from this package.
"""

from dlm.testing.contracts.core import (
    ATOL,
    CPU,
    DTYPE,
    OTHER_PROMPTS,
    PROMPTS,
    RTOL,
    SMALL_ITERATION,
    ContractReport,
    ContractViolation,
    NotApplicable,
    Outcome,
)
from dlm.testing.contracts.decoding import synthetic_windows
from dlm.messages import PLUGIN_API
from dlm.testing.contracts.fixtures import FAMILIES, VARIANTS, model_config_for, model_for, tiny_checkpoint, tiny_model
from dlm.testing.contracts.probes import check_config
from dlm.testing.contracts.registry import (
    BASES,
    CHECKS,
    Check,
    check_cache_manager,
    check_component,
    check_decoding_strategy,
    check_iteration_manager,
    check_model_adapter,
    contract_test,
    default_config,
    run_check,
)

__all__ = [
    "ATOL",
    "BASES",
    "CHECKS",
    "CPU",
    "DTYPE",
    "FAMILIES",
    "VARIANTS",
    "OTHER_PROMPTS",
    "PLUGIN_API",
    "PROMPTS",
    "RTOL",
    "SMALL_ITERATION",
    "Check",
    "ContractReport",
    "ContractViolation",
    "NotApplicable",
    "Outcome",
    "check_cache_manager",
    "check_component",
    "check_config",
    "check_decoding_strategy",
    "check_iteration_manager",
    "check_model_adapter",
    "contract_test",
    "default_config",
    "model_config_for",
    "model_for",
    "run_check",
    "synthetic_windows",
    "tiny_checkpoint",
    "tiny_model",
]
