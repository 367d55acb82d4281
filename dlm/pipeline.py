"""The pipeline: four components composed from a config, and the generation loop that drives them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor

from dlm.cache.base import CacheManager
from dlm.candidates import forward_candidates
from dlm.config import PipelineConfig, apply_threads, build_config, default_config_path, load_config
from dlm.decoding.base import DecodingStrategy
from dlm.errors import CompositionError, InputError
from dlm.iteration.base import IterationManager
from dlm.messages import Commit, ForwardPlan, Window
from dlm.distributed import local_device
from dlm.models.base import ModelAdapter
from dlm.models.compiled import compile_transformer
from dlm.models.parallel import shard_transformer
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
        self.seed = seed
        self._candidates = None  # the current candidate step's forward, until its commit keeps one
        self.config = config
        names = config.to_dict() if config else {}

        def name(kind: str, component) -> str:
            return names.get(kind, {}).get("name", type(component).__name__)

        problems = [
            f"{kind} {name(kind, comp)!r} cannot be used with model {name('model', model)!r}: {problem}"
            for kind, comp in (("iteration", iteration), ("cache", cache))
            if (problem := comp.check(model.capabilities))
        ]
        if problems:
            raise CompositionError("; ".join(problems))

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
        """Build from a mapping shaped like the YAML file (or an already validated config).

        ``model``: an adapter already loaded (e.g. by another pipeline) to use instead of loading the config's
        model section again; it must be an instance of the section's adapter class.
        """
        if not isinstance(config, PipelineConfig):
            config = build_config(config, source=source, overrides=overrides)
        apply_threads(config.run.threads)
        if model is None:
            device = local_device(torch.device(config.run.device))
            if device.type == "cuda" and not torch.cuda.is_available():
                raise CompositionError(f"{config.source}: device {config.run.device!r} requested but CUDA is not available")
            model = config.model.cls.load(config.model.config, dtype=config.torch_dtype, device=device)
            if config.run.tensor_parallel > 1:
                shard_transformer(model, config.run.tensor_parallel)
        if config.run.compile:
            compile_transformer(model)
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
        chat = bool(getattr(self.model.config, "chat_template", False))
        return [torch.tensor(self.model.encode(p, chat=chat), dtype=torch.long) for p in prompts]

    def _as_rows(self, prompts, input_ids) -> list[Tensor]:
        if (prompts is None) == (input_ids is None):
            raise InputError("give exactly one of prompts=[...] (text) or input_ids=... (token ids)")
        if prompts is not None:
            if isinstance(prompts, str):
                prompts = [prompts]
            return self.encode(prompts)
        if isinstance(input_ids, Tensor):
            if input_ids.dtype not in (torch.long, torch.int32, torch.int64):
                raise InputError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
            rows = [input_ids] if input_ids.dim() == 1 else list(input_ids)
        else:
            if input_ids and isinstance(input_ids[0], int):
                input_ids = [input_ids]
            rows = [torch.tensor(list(r), dtype=torch.long) for r in input_ids]
        vocab = self.model.capabilities.vocab_size
        for i, r in enumerate(rows):
            if vocab is not None and r.numel() and (int(r.min()) < 0 or int(r.max()) >= vocab):
                raise InputError(f"input_ids row {i} holds ids outside the vocabulary [0, {vocab})")
        return [r.long() for r in rows]

    def generate(
        self,
        prompts: Sequence[str] | str | None = None,
        *,
        input_ids: Tensor | Sequence[Sequence[int]] | None = None,
        trace: Trace | None = None,
    ) -> GenerationOutput:
        """Generate for a batch of prompts of any lengths; each row gives what it gives alone.

        Sampling (temperature > 0) draws row ``r`` from its own stream seeded with ``seed + r``, so a batch
        row reproduces a single-prompt call made with seed ``seed + r``.
        """
        rows = self._as_rows(prompts, input_ids)
        device = self.model.device
        state = self.iteration.start(rows, self.model.capabilities, device)
        generator = RowRNG(self.seed, state.batch_size, device)
        t0 = time.perf_counter()
        self.cache.start(state, self.model)
        self.decoding.start(state)
        try:
            self._loop(state, generator, trace)
        finally:
            self.decoding.finish()
            self.cache.finish()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return self._output(state, time.perf_counter() - t0)

    def _loop(self, state: GenerationState, generator: RowRNG, trace: Trace | None) -> None:
        """The whole algorithm: window, plan, forward, select, commit, advance."""
        while not self.iteration.done(state):
            window = self.decoding.prepare(state, self.iteration.window(state))
            plan = self.cache.plan(state, window)
            logits = self._forward(state, plan, window)  # [b, S, V] over the window's logits span
            state.count_forward(plan.rows)
            commit = self.decoding.select(logits, window, generator)
            self._keep(commit)
            state.commit(window, commit)
            self.iteration.advance(state)
            if trace is not None:
                trace(state)

    def _forward(self, state: GenerationState, plan: ForwardPlan, window: Window):
        if window.candidates is None:
            return self.model.forward(state, plan, window)
        self._candidates = forward_candidates(self.model, state, plan, window)
        return self._candidates.logits  # [b, K, S, V]

    def _keep(self, commit: Commit) -> None:
        """After a candidate step: the kept candidate's K/V become its row's."""
        if self._candidates is not None:
            self._candidates.keep(commit)
            self._candidates = None

    def _output(self, state: GenerationState, seconds: float) -> GenerationOutput:
        steps = torch.stack(state.tokens_per_step, dim=1).cpu() if state.tokens_per_step else None
        canvas = state.canvas.cpu()
        tok = self.model.tokenizer
        end_ids = set(state.eos_ids)
        sequences, generated, texts, per_step = [], [], [], []
        for r in range(state.batch_size):
            sequences.append(canvas[r, int(state.pad[r]) :].clone())
            gen = canvas[r, state.gen_start :].clone()
            generated.append(gen)
            row_steps = [] if steps is None else [int(c) for c in steps[r] if c > 0]
            per_step.append(row_steps)
            if tok is not None:
                ids = gen.tolist()
                cut = next((i for i, t in enumerate(ids) if t in end_ids), len(ids))
                texts.append(tok.decode([t for t in ids[:cut] if t != state.mask_id]))
        return GenerationOutput(
            sequences=sequences,
            generated=generated,
            texts=texts if tok is not None else None,
            nfe=[int(n) for n in state.nfe.cpu()],
            tokens_per_step=per_step,
            seconds=seconds,
            state=state,
        )
