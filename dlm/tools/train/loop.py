"""Training loop of the demo model: AdamW, linear warm-up then cosine decay, bf16 autocast on CPU.

Recipe in docs/demo.md (a pre-norm RMSNorm/SwiGLU transformer trained with the
LLaDA SFT objective reaches exact answers on small algorithmic tasks within minutes on two CPU cores).
Reproducible: the weights' initialisation, the data stream and the masking noise all derive from ``seed``.
"""

from __future__ import annotations

import math
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from dlm.models.layers import Transformer, TransformerSpec
from dlm.tools.tasks import (
    ANSWER_LENGTH, FEWSHOT_ANSWER_LENGTH, FEWSHOT_PROMPT_LENGTH, LONG_ANSWER_LENGTH, LONG_PROMPT_LENGTH, MAX_PROMPT_LENGTH,
)
from dlm.tools.train.checkpoint import save_llada_checkpoint
from dlm.tools.train.data import VOCAB_SIZE, Mixture
from dlm.tools.train.objective import Masking, check_masking, sft_loss
from dlm.tools.train.resume import STATE_DIR, RunState, has_state, load_state, save_state

DEFAULT_WEIGHTS = {"add": 0.35, "rev": 0.3, "sort": 0.15, "pair": 0.1, "perm": 0.1}
LONG_WEIGHTS = {"addw": 0.65, "shift": 0.35}
FEWSHOT_WEIGHTS = {"runsum": 1.0}


@dataclass(frozen=True)
class TrainConfig:
    dim: int = 192
    n_layers: int = 4
    n_heads: int = 6
    ffn_dim: int = 512
    max_length: int = 64  # context of the saved model (training uses MAX_PROMPT_LENGTH + ANSWER_LENGTH)
    steps: int = 12000
    batch_size: int = 128
    lr: float = 1.5e-3
    min_lr_ratio: float = 0.05
    warmup: int = 100
    weight_decay: float = 0.01
    clip: float = 1.0
    seed: int = 1  # seeds 0-2 compared in docs/demo.md (runs R1, R5, R6); the shipped checkpoint is R8 (seed 1)
    masking: Masking = "count"  # estimator of the SFT loss: "count" (k of A masked, weight A/k) or "bernoulli" (1/t)
    bf16: bool = True  # bf16 autocast (about 2x faster on CPU); weights and optimiser stay float32
    threads: int | None = None  # torch CPU threads; None keeps torch's default (one per core)
    compile: bool = True  # torch.compile the model (~2.5x faster steps on CPU; falls back to eager on failure)
    max_minutes: float | None = None  # stop early (with a warning) when this much time has passed
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    init: str | None = None  # continue from the weights of this LLaDA-layout checkpoint directory

    def __post_init__(self) -> None:
        # checked here, not at the first step, where the compile fallback would catch it and retry eagerly
        check_masking(self.masking)
        if sum(self.lengths().values()) > self.max_length:
            raise ValueError(f"max_length {self.max_length} is shorter than a training row "
                             f"({' + '.join(f'{k} {v}' for k, v in self.lengths().items())})")

    group = "demo"  # the task group trained on (class attribute, not a recipe field)

    def lengths(self) -> dict[str, int]:
        """Prompt and answer columns of every training row (the answer columns = the generation length)."""
        return {"prompt_length": MAX_PROMPT_LENGTH, "answer_length": ANSWER_LENGTH}

    def loss_options(self) -> dict:
        """Keyword arguments of :func:`~dlm.tools.train.objective.sft_loss` besides the batch."""
        return {"masking": self.masking}

    def spec(self) -> TransformerSpec:
        return TransformerSpec(
            vocab_in=VOCAB_SIZE, vocab_out=VOCAB_SIZE, dim=self.dim, n_layers=self.n_layers, n_heads=self.n_heads,
            n_kv_heads=self.n_heads, ffn_dim=self.ffn_dim, norm_eps=1e-5, rope_theta=10000.0,
            max_length=self.max_length,
        )


@dataclass(frozen=True)
class LongTrainConfig(TrainConfig):
    """Recipe of the long-answer model (``dlm/assets/long``, docs/long.md): the ``long`` task group, 80 answer
    columns, half the rows masked semi-autoregressively in blocks of 16 (what the blockwise sampler visits)."""

    dim: int = 192
    n_layers: int = 4
    n_heads: int = 6
    ffn_dim: int = 512
    max_length: int = 256
    steps: int = 1500
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0
    semi_ar: float = 0.5  # share of rows masked as the blockwise sampler leaves a canvas
    block_length: int = 16
    weights: dict[str, float] = field(default_factory=lambda: dict(LONG_WEIGHTS))

    group = "long"

    def lengths(self) -> dict[str, int]:
        return {"prompt_length": LONG_PROMPT_LENGTH, "answer_length": LONG_ANSWER_LENGTH}

    def loss_options(self) -> dict:
        return {"masking": self.masking, "semi_ar": self.semi_ar, "block_length": self.block_length}


@dataclass(frozen=True)
class FewshotTrainConfig(LongTrainConfig):
    """Recipe of the few-shot model (``dlm/assets/fewshot``, docs/fewshot.md): the ``fewshot`` group, prompts
    of up to 372 columns and 128 answer columns, three rows in four masked semi-autoregressively in blocks of 8
    (each total's predecessor clean, the state one-token-per-step decoding visits; the pilots of docs/fewshot.md
    chose these and lr 2e-3)."""

    dim: int = 192
    n_layers: int = 4
    n_heads: int = 6
    ffn_dim: int = 512
    max_length: int = 512
    steps: int = 1800
    batch_size: int = 32
    lr: float = 2e-3
    seed: int = 0
    semi_ar: float = 0.75
    block_length: int = 8
    weights: dict[str, float] = field(default_factory=lambda: dict(FEWSHOT_WEIGHTS))

    group = "fewshot"

    def lengths(self) -> dict[str, int]:
        return {"prompt_length": FEWSHOT_PROMPT_LENGTH, "answer_length": FEWSHOT_ANSWER_LENGTH}


@dataclass
class TrainResult:
    net: Transformer
    losses: list[float]  # per step
    steps: int
    seconds: float
    stopped_early: bool = False


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``lr``, then cosine decay to ``min_lr_ratio * lr`` at ``steps``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def build_model(cfg: TrainConfig) -> Transformer:
    """A freshly initialised model, or the weights of ``cfg.init`` (float32, trainable) to continue from."""
    torch.manual_seed(cfg.seed)
    if cfg.init is not None:
        return load_for_training(Path(cfg.init))
    net = Transformer(cfg.spec())
    with torch.no_grad():  # small embeddings / output head: the usual 0.02-std transformer init
        net.embed.weight.normal_(0.0, 0.02)
        if net.head is not None:
            net.head.weight.normal_(0.0, 0.02)
    return net


def load_for_training(directory: Path) -> Transformer:
    from dlm.models.checkpoint import read_config
    from dlm.models.llada import llada_names, llada_spec
    from dlm.models.transformer import load_transformer

    spec = llada_spec(read_config(directory), directory)
    net = load_transformer(directory, spec, llada_names(spec), dtype=torch.float32, device=torch.device("cpu"))
    return net.requires_grad_(True)


def train(
    cfg: TrainConfig, *, progress: bool = True, on_step: Callable[[int, float], None] | None = None,
    state_dir: Path | None = None, save_every: int = 0, resume: bool = False,
) -> TrainResult:
    """Train a fresh model with ``cfg`` and return it (float32, in eval mode).

    ``state_dir``: where the run's state goes (:mod:`dlm.tools.train.resume`), every ``save_every`` steps
    and when ``max_minutes`` stops the run; ``resume``: continue from the state found there, if any."""
    previous_threads = torch.get_num_threads()
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    # Inductor lowers the embedding's backward (an accumulating index_put) to parallel atomic adds, whose
    # order varies from run to run; deterministic mode makes it fall back to the ordered kernel, at no
    # measurable cost here, so the same command gives the same weights.
    torch.use_deterministic_algorithms(True)
    try:
        net = build_model(cfg).train()
        decay = [p for n, p in net.named_parameters() if p.dim() >= 2]
        no_decay = [p for n, p in net.named_parameters() if p.dim() < 2]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr, betas=(0.9, 0.98),
        )
        data = Mixture(cfg.weights, seed=cfg.seed, batch_size=cfg.batch_size, **cfg.lengths())
        noise = torch.Generator().manual_seed(cfg.seed + 1)
        losses: list[float] = []
        done, spent = 0, 0.0
        if resume and state_dir is not None and has_state(state_dir):
            run = load_state(state_dir, recipe_of(cfg), net, opt, noise)
            losses, done, spent = run.losses, run.step, run.seconds
            for _ in range(done):  # the data stream is a function of the seed: skip the batches already used
                next(data)
        t0, stopped = time.perf_counter(), False

        def save(steps: int) -> None:
            if state_dir is not None:
                save_state(state_dir, recipe_of(cfg), net, opt, noise,
                           RunState(steps, losses, spent + time.perf_counter() - t0))

        forward = _compiled(net) if cfg.compile else net
        bar = tqdm(range(done, cfg.steps), initial=done, total=cfg.steps, desc=f"train {cfg.group}", unit="step",
                   disable=not progress, dynamic_ncols=True)
        if forward is not net:
            bar.set_postfix_str("compiling the model on the first step (about 30 s)")
        for step in bar:
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            batch = next(data)
            noise_state = noise.get_state()
            try:
                loss = _loss(forward, batch, noise, cfg)
            except Exception as err:  # noqa: BLE001 - only the first, compiling step may fall back
                if forward is net or step > done:
                    raise
                warnings.warn(f"torch.compile failed ({type(err).__name__}: {err}); training eagerly instead "
                              "(about 2.5x slower; pass --no-compile to skip the attempt)", stacklevel=2)
                forward = net
                noise.set_state(noise_state)
                loss = _loss(forward, batch, noise, cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.clip)
            opt.step()
            losses.append(float(loss.detach()))
            if step % 10 == 0:
                bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
            if on_step is not None:
                on_step(step, losses[-1])
            if save_every and (step + 1) % save_every == 0 and step + 1 < cfg.steps:
                save(step + 1)
            if cfg.max_minutes is not None and time.perf_counter() - t0 > 60 * cfg.max_minutes:
                stopped = True
                save(step + 1)
                break
        bar.close()
        return TrainResult(net.eval(), losses, len(losses), spent + time.perf_counter() - t0, stopped)
    finally:
        torch.set_num_threads(previous_threads)
        torch.use_deterministic_algorithms(was_deterministic, warn_only=was_warn_only)


def _loss(forward: Callable[..., torch.Tensor], batch, noise: torch.Generator, cfg: TrainConfig) -> torch.Tensor:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
        return sft_loss(forward, batch, noise, **cfg.loss_options())


def _compiled(net: Transformer) -> Callable[..., torch.Tensor]:
    """``net`` compiled for training: the batch shape is fixed, so one static graph (compiled on the first
    step, ~30 s on 2 cores) fuses the norms, RoPE and attention ops that dominate a small model's step."""
    return torch.compile(net, dynamic=False)


def recipe_of(cfg: TrainConfig) -> dict:
    """The fields of ``cfg`` that decide the trained weights (not threads, time limit or compiling), as
    recorded under ``dlm_demo.recipe`` in a saved checkpoint's ``config.json``."""
    return {k: v for k, v in asdict(cfg).items() if k not in ("threads", "max_minutes", "compile")}


def train_and_save(
    cfg: TrainConfig, out: Path, *, progress: bool = True, save_every: int = 0, resume: bool = False
) -> TrainResult:
    """Train, then write the LLaDA-layout checkpoint (bf16 weights) and a record of the run to ``out``.
    The run's state is kept in ``out/train-state`` while it is unfinished (``save_every`` steps, or a
    ``max_minutes`` stop) so that ``resume`` continues it; a finished run removes it."""
    result = train(cfg, progress=progress, state_dir=Path(out), save_every=save_every, resume=resume)
    if not result.stopped_early:
        shutil.rmtree(Path(out) / STATE_DIR, ignore_errors=True)
    extra = {
        "dlm_demo": {
            "recipe": recipe_of(cfg),
            "steps_done": result.steps,
            "train_seconds": round(result.seconds, 1),
            "final_loss": round(sum(result.losses[-100:]) / max(1, len(result.losses[-100:])), 5),
            "group": cfg.group,
            **cfg.lengths(),
        }
    }
    save_llada_checkpoint(result.net, out, extra=extra)
    return result
