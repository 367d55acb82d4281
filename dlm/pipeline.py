"""The pipeline: four components composed from a config, and the generation loop that drives them."""

from __future__ import annotations

import inspect
import numbers
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor

from dlm import compat
from dlm.cache.base import CacheManager
from dlm.config import PipelineConfig, apply_threads, build_config, default_config_path, load_config
from dlm.decoding.base import DecodingStrategy
from dlm.distributed import local_device
from dlm.errors import CompositionError, InputError
from dlm.iteration.base import IterationManager, needs_prompt
from dlm.messages import CacheEnv, Candidates, ReadRows
from dlm.models.base import ModelAdapter
from dlm.rng import RowRNG
from dlm.state import GenerationState

Trace = Callable[[GenerationState], None]


@dataclass
class GenerationOutput:
    """Result of :meth:`Pipeline.generate`; lists are per row, in input order."""

    sequences: list[Tensor]  # prompt + generation of each row (no padding), 1-D long
    generated: list[Tensor]  # the generation region of each row
    texts: list[str] | None  # generated text cut at the first end token (None without a tokenizer)
    nfe: list[int]  # forward passes each row took part in
    tokens_per_step: list[list[int]]  # per row: tokens committed at each step it took part in
    seconds: float = 0.0  # wall time of the generation loop
    state: GenerationState | None = field(default=None, repr=False)

    @property
    def tokens_per_forward(self) -> list[float]:
        return [sum(s) / max(n, 1) for s, n in zip(self.tokens_per_step, self.nfe)]


def _id_rows(input_ids) -> list[Tensor]:
    """``input_ids`` (a 1-D/2-D integer tensor, one list of ids, or a list of rows) as 1-D tensors."""
    if isinstance(input_ids, Tensor):
        if input_ids.dtype == torch.bool or input_ids.is_floating_point() or input_ids.is_complex():
            raise InputError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
        if input_ids.dim() not in (1, 2):
            raise InputError(
                f"input_ids must be 1-D (one prompt) or 2-D [batch, length]; got shape {list(input_ids.shape)}"
            )
        return [input_ids] if input_ids.dim() == 1 else list(input_ids)
    if hasattr(input_ids, "__array__") and not isinstance(input_ids, (list, tuple, str, bytes)):  # numpy
        try:
            array = torch.as_tensor(input_ids)
        except (TypeError, ValueError, RuntimeError) as err:
            raise InputError(f"input_ids array cannot be read as token ids: {err}") from None
        return _id_rows(array)
    if not isinstance(input_ids, (list, tuple)):
        raise InputError(f"input_ids must be a tensor or a list of token-id lists; got {type(input_ids).__name__}")
    if input_ids and _is_id(input_ids[0]):
        input_ids = [input_ids]
    rows = []
    for i, row in enumerate(input_ids):
        if isinstance(row, Tensor):
            if row.dim() != 1:
                raise InputError(f"input_ids row {i} must be 1-D, got shape {list(row.shape)}")
            rows.extend(_id_rows(row))
            continue
        if not isinstance(row, (list, tuple)):
            raise InputError(f"input_ids row {i} is {type(row).__name__} {row!r:.60}; a row is a list of token ids")
        for j, v in enumerate(row):
            if not _is_id(v):
                nested = isinstance(v, (list, tuple)) or isinstance(v, Tensor) and v.dim() > 0
                kind = "a list: one level of nesting too many" if nested else type(v).__name__
                raise InputError(f"input_ids row {i} position {j} holds {v!r:.60} ({kind}); token ids are integers")
        if any(not -(2**63) <= int(v) < 2**63 for v in row):
            raise InputError(f"input_ids row {i} holds an id beyond 64 bits; token ids lie in the vocabulary")
        rows.append(torch.tensor([int(v) for v in row], dtype=torch.long))
    return rows


def _is_id(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


class Pipeline:
    """model + iteration + decoding + cache, checked to work together when built."""

    def __init__(
        self,
        model: ModelAdapter,
        iteration: IterationManager,
        decoding: DecodingStrategy,
        cache: CacheManager,
        *,
        seed: int = 0,
        config: PipelineConfig | None = None,
    ) -> None:
        self.model, self.iteration, self.decoding, self.cache = model, iteration, decoding, cache
        defaults = getattr(model, "generation_defaults", None)  # a checkpoint's generation_config.json settings
        if defaults and "defaults" in type(decoding.config).model_fields and not decoding.config.defaults:
            decoding.config = decoding.config.model_copy(update={"defaults": dict(defaults)})
        self.seed = seed
        self.config = config
        features = getattr(model, "new_features", None) if model.capabilities.layer_plans else None
        self.env = CacheEnv(capabilities=model.capabilities, new_kv=model.new_kv, new_features=features)
        names = config.to_dict() if config else {}

        def name(kind: str, component) -> str:
            return names.get(kind, {}).get("name") or compat.registered_name(kind, component)

        components = {"iteration": iteration, "decoding": decoding, "cache": cache}
        labels = {kind: name(kind, comp) for kind, comp in {**components, "model": model}.items()}
        # each component against the model (its own check and its declared model requirements), then every pair
        # of components against each other's declarations (dlm.compat)
        problems = [
            f"{kind} {labels[kind]!r} cannot be used with model {labels['model']!r}: {problem}"
            for kind, comp in components.items()
            for problem in compat.model_problems(kind, comp, model.capabilities)
        ]
        problems += compat.problems(components, labels)
        gen_length = getattr(iteration.config, "gen_length", None)
        unconditional = needs_prompt(model.capabilities) is None  # the whole context may be generated (no prompt)
        if isinstance(gen_length, int) and gen_length > model.capabilities.max_length:
            problems.append(
                f"iteration {name('iteration', iteration)!r} generates {gen_length} tokens, more than the context of "
                f"model {name('model', model)!r} ({model.capabilities.max_length} tokens); set iteration.gen_length "
                f"to at most {model.capabilities.max_length - 1} minus the prompt length"
                + (f" ({model.capabilities.max_length} for unconditional generation, with no prompt)"
                   if unconditional else "")
            )
        elif isinstance(gen_length, int) and gen_length == model.capabilities.max_length and not unconditional:
            problems.append(
                f"iteration {name('iteration', iteration)!r} generates {gen_length} tokens, which leaves no room for "
                f"a prompt in the context of model {name('model', model)!r} ({model.capabilities.max_length} "
                f"tokens); set iteration.gen_length to at most {model.capabilities.max_length - 1} minus the "
                "prompt length"
            )
        if problems:
            raise CompositionError("\n".join(problems))

    # --- construction -------------------------------------------------------------------------------

    @classmethod
    def from_config(
        cls,
        config: Mapping[str, Any] | PipelineConfig,
        *,
        overrides=None,
        source: str = "<dict>",
        model: ModelAdapter | None = None,
    ) -> "Pipeline":
        """Build from a mapping shaped like the YAML file (or an already validated config, which ``overrides``
        then change: it is validated again with them).

        ``model``: an adapter already loaded (e.g. by another pipeline) to use instead of loading the config's
        model section again; it must be an instance of the section's adapter class.
        """
        if isinstance(config, PipelineConfig):
            if overrides:
                config = build_config(config.to_dict(), source=config.source, overrides=overrides)
        else:
            config = build_config(config, source=source, overrides=overrides)
        apply_threads(config.run.threads)
        if model is None:
            device = local_device(torch.device(config.run.device))  # a cpu/cuda device string, checked by the config
            if device.type == "cuda" and not torch.cuda.is_available():
                raise CompositionError(f"{config.source}: device {config.run.device!r} requested but CUDA is not available")
            if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
                n = torch.cuda.device_count()
                raise CompositionError(
                    f"{config.source}: device {config.run.device!r} requested but this machine has {n} CUDA "
                    f"device{'s' if n > 1 else ''} (cuda:0 to cuda:{n - 1})"
                )
            model = config.model.cls.load(config.model.config, dtype=config.torch_dtype, device=device)
            tp, ep = config.run.tensor_parallel, config.run.expert_parallel
            if ep > 1:
                if "expert_parallel" not in inspect.signature(model.shard).parameters:  # a plugin's older shard()
                    raise CompositionError(f"{config.source}: expert_parallel is not supported by the "
                                           f"{type(model).__name__} adapter (its shard() takes no expert_parallel)")
                model.shard(tp, expert_parallel=ep)
            elif tp > 1:
                model.shard(tp)
        if config.run.compile:
            model.compile()
        elif not isinstance(model, config.model.cls):
            raise CompositionError(
                f"{config.source}: model= is a {type(model).__name__}, but the config's model section names "
                f"{config.model.name!r} ({config.model.cls.__name__})"
            )
        return cls(
            model,
            config.iteration.cls(config.iteration.config),
            config.decoding.cls(config.decoding.config),
            config.cache.cls(config.cache.config),
            seed=config.run.seed,
            config=config,
        )

    @classmethod
    def from_yaml(cls, path: str | Path, *, overrides=None, model: ModelAdapter | None = None) -> "Pipeline":
        """Build from a YAML file; ``overrides`` like ``["decoding.threshold=0.8"]`` or a dict."""
        return cls.from_config(load_config(path, overrides), model=model)

    @classmethod
    def default(cls, *, overrides=None) -> "Pipeline":
        """The built-in default pipeline (the embedded demo model, ``dlm/configs/default.yaml``)."""
        return cls.from_yaml(default_config_path(), overrides=overrides)

    # --- generation ----------------------------------------------------------------------------------

    def encode(self, prompts: Sequence[str]) -> list[Tensor]:
        """Token ids of each text prompt (the chat template applied when the model config asks for it)."""
        chat = bool(getattr(self.model.config, "chat_template", False))
        rows = []
        for i, p in enumerate(prompts):
            try:
                rows.append(torch.tensor(self.model.encode(p, chat=chat), dtype=torch.long))
            except InputError as err:
                raise InputError(f"prompt {i}: {err}") from None
        return rows

    def _as_rows(self, prompts, input_ids, n=None) -> list[Tensor]:
        """The prompts as 1-D long tensors, each checked: token ids in the vocabulary, no MASK token; ``n``: that
        many empty prompts (unconditional generation)."""
        if sum(x is not None for x in (prompts, input_ids, n)) != 1:
            raise InputError("give exactly one of prompts=[...] (text), input_ids=... (token ids) or n=... (that many "
                             "unconditional samples, no prompt)")
        if n is not None:
            if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
                raise InputError(f"n must be a positive integer (the number of unconditional samples), got {n!r}")
            return [torch.zeros(0, dtype=torch.long) for _ in range(int(n))]
        if prompts is not None:
            if isinstance(prompts, str):
                prompts = [prompts]
            if not isinstance(prompts, (list, tuple)):
                raise InputError(f"prompts must be a string or a list of strings; got {type(prompts).__name__}")
            for i, p in enumerate(prompts):
                if not isinstance(p, str):
                    raise InputError(
                        f"prompt {i} is {type(p).__name__} {p!r:.60}, not a string; token ids go in input_ids="
                    )
            rows, what = self.encode(prompts), "prompt"
        else:
            rows, what = _id_rows(input_ids), "input_ids row"
        caps = self.model.capabilities
        for i, r in enumerate(rows):
            if caps.vocab_size is not None and r.numel() and (int(r.min()) < 0 or int(r.max()) >= caps.vocab_size):
                bad = int(r.min()) if int(r.min()) < 0 else int(r.max())
                raise InputError(
                    f"{what} {i} holds id {bad}, outside the vocabulary [0, {caps.vocab_size})"
                    + ("; the tokenizer does not match the checkpoint" if what == "prompt" else "")
                )
            if r.numel() and int(r[0]) in caps.eos_ids:
                raise InputError(
                    f"{what} {i} starts with the end token {int(r[0])}; the model would read the prompt as ended "
                    "before it began: remove the leading end token(s)"
                )
            if bool((r == caps.mask_id).any()):
                pos = int((r == caps.mask_id).nonzero()[0, 0])
                raise InputError(
                    f"{what} {i} holds the MASK token (id {caps.mask_id}) at position {pos}; prompt positions are "
                    "never denoised, so it would stay masked. Remove it: only the generation region is filled"
                )
        return [r.long() for r in rows]

    @property
    def joinable(self) -> bool:
        """Rows may join a running generation of this pipeline (every component keeps per-row run memory)."""
        return all(getattr(c, "joinable", False) for c in (self.iteration, self.decoding, self.cache))

    def start(
        self,
        prompts: Sequence[str] | str | None = None,
        *,
        input_ids: Tensor | Sequence[Sequence[int]] | None = None,
        seeds: Sequence[int] | None = None,
        gen_start: int | None = None,
        tags: Sequence[Any] | None = None,
        n: int | None = None,
    ) -> GenerationState:
        """A new generation's state, ready for :meth:`step`: the canvas, and every component's run memory.

        ``gen_start`` places the generation region (default: after the longest prompt), so rows started
        apart share a layout and can be joined (:meth:`GenerationState.cat`); ``tags`` label the rows; ``n``
        instead of prompts starts ``n`` unconditional rows (see :meth:`generate`).
        """
        rows = self._as_rows(prompts, input_ids, n)
        if seeds is not None and len(seeds) != len(rows):
            raise InputError(f"seeds has {len(seeds)} entries for {len(rows)} prompts; give one seed per prompt")
        if tags is not None and len(tags) != len(rows):
            raise InputError(f"tags has {len(tags)} entries for {len(rows)} prompts")
        device = self.model.device
        state = self.iteration.start(rows, self.model.capabilities, device, **({} if gen_start is None else
                                                                               {"gen_start": gen_start}))
        state.rng = RowRNG(self.seed if seeds is None else seeds, state.batch_size, device)
        if tags is not None:
            state.tags = list(tags)
        state.memory["cache"] = self.cache.start(state, self.env)
        state.memory["decoding"] = self.decoding.start(state)
        return state

    def done(self, state: GenerationState) -> bool:
        """No row of ``state`` has work left."""
        return self.iteration.done(state)

    def step(self, state: GenerationState) -> None:
        """One step of the algorithm: window, plan, forward, select, commit, advance."""
        window = self.decoding.prepare(state, self.iteration.window(state))
        plan = self.cache.plan(state, window).for_window(window)
        if window.has(Candidates):
            plan = self.cache.plan_candidates(state, plan, window)
        elif self.decoding.reads_eligible_only and (plan.logits_start, plan.logits_end) == (window.start, window.end):
            plan = plan.extend(ReadRows(window.eligible))
        logits = self.model.forward(state, plan)  # [b, S, V] over the window's logits span ([b, K, S, V])
        state.count_forward(window.rows)
        window = self.iteration.narrow(state, window, logits)  # a block decided from the step's logits (adablock)
        commit = self.decoding.select(state, window, logits, state.rng)
        self.cache.keep(state, plan, commit)
        state.commit(window, commit)
        self.iteration.advance(state)

    def run(self, state: GenerationState, trace: Trace | None = None) -> GenerationState:
        """Step ``state`` until every row is done (the whole loop)."""
        while not self.iteration.done(state):
            self.step(state)
            if trace is not None:
                trace(state)
        return state

    def generate(
        self,
        prompts: Sequence[str] | str | None = None,
        *,
        input_ids: Tensor | Sequence[Sequence[int]] | None = None,
        trace: Trace | None = None,
        seeds: Sequence[int] | None = None,
        n: int | None = None,
    ) -> GenerationOutput:
        """Generate for a batch of prompts of any lengths; each row gives what it gives alone.

        Sampling (temperature > 0) draws row ``r`` from its own stream seeded with ``seed + r`` (or
        ``seeds[r]``), so a batch row reproduces a single-prompt call made with that seed. Thread-safe: one
        pipeline may run several generations at once (all run memory is on each generation's state).

        **Unconditional generation**: ``generate(n=4)`` draws 4 samples with no prompt (each row's whole canvas,
        ``gen_length`` tokens, starts as MASK; MDLM's and DiDi-Instruct's sampling); the same as
        ``input_ids=[[]] * 4`` or ``prompts=[""] * 4``. An empty prompt may also sit in a batch with others. A model
        that needs a prompt (shifted logits or causal attention: Dream, Fast-dLLM v2, causal decoders) is refused
        with an :class:`~dlm.errors.InputError` saying so.
        """
        if trace is not None and not callable(trace):
            raise InputError(f"trace must be a callable taking the GenerationState, got {type(trace).__name__}")
        state = self.start(prompts, input_ids=input_ids, seeds=seeds, n=n)
        t0 = time.perf_counter()
        self.run(state, trace)
        if state.device.type == "cuda":
            torch.cuda.synchronize(state.device)
        return self.output(state, time.perf_counter() - t0)

    def output(self, state: GenerationState, seconds: float = 0.0) -> GenerationOutput:
        """The result of every row of ``state``, in row order."""
        steps = state.tokens_per_step
        canvas = state.canvas.cpu()
        tok = self.model.tokenizer
        end_ids = set(state.eos_ids)
        sequences, generated, texts = [], [], []
        for r in range(state.batch_size):
            sequences.append(canvas[r, int(state.pad[r]) :].clone())
            gen = canvas[r, state.gen_start :].clone()
            generated.append(gen)
            if tok is not None:
                ids = gen.tolist()
                cut = next((i for i, t in enumerate(ids) if t in end_ids), len(ids))
                texts.append(tok.decode([t for t in ids[:cut] if t != state.mask_id]))
        return GenerationOutput(
            sequences=sequences,
            generated=generated,
            texts=texts if tok is not None else None,
            nfe=[int(n) for n in state.nfe.cpu()],
            tokens_per_step=[[c for c in row if c > 0] for row in steps],
            seconds=seconds,
            state=state,
        )
