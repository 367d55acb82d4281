"""The ``dlm`` model of lm-evaluation-harness: any dlm pipeline, scored on lm-eval's tasks.

``lm_eval --model dlm --model_args config=PATH,decoding.threshold=0.9`` (through ``dlm lm-eval``, which
registers it) builds the pipeline once and answers lm-eval's three request types:

* ``generate_until``: requests sharing generation settings are batched (any prompt lengths: the pipeline
  left-pads), ``max_gen_toks`` rounded up to whole blocks (:mod:`.generation`), each answer cut at the first
  ``until`` string;
* ``loglikelihood`` / ``loglikelihood_rolling``: Monte-Carlo estimates (:mod:`.likelihood`), LLaDA's for
  masked models, Dream's for shifted-logit ones, each request seeded from the config seed and its own text
  so that results do not depend on batching or on how documents are split across processes.

Each request's forwards (NFE) and seconds are appended to its arguments as ``{"dlm": {"nfe": [...],
"seconds": [...], "rank": r}}`` (one entry per repeat; a generation batch's time is shared equally by its
rows), which ``--log_samples`` writes out. Under ``torchrun`` each
process evaluates a stride of the documents and lm-eval merges the metrics through :meth:`all_gather`,
:meth:`gather_object` and :meth:`barrier` (gloo on CPU, NCCL on CUDA).
"""

from __future__ import annotations

import atexit
import logging
import os
import time
import zlib
from typing import Any

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from dlm.errors import InputError
from dlm.pipeline import Pipeline
from dlm.tools.lm_eval import likelihood
from dlm.tools.lm_eval.generation import GenSettings, USED_KEYS, cut_at_stop, gen_settings, variant_config
from dlm.tools.lm_eval.options import parse_model_args

STATS_KEY = "dlm"
log = logging.getLogger(__name__)


def record_stats(instance, nfe: int, seconds: float, rank: int = 0) -> None:
    """Append this request's NFE and seconds to its arguments (what ``--log_samples`` writes), with the rank
    of the process that ran it."""
    args = tuple(instance.arguments)
    if args and isinstance(args[-1], dict) and set(args[-1]) == {STATS_KEY}:
        stats = args[-1][STATS_KEY]
    else:
        stats = {"nfe": [], "seconds": [], "rank": rank}
        instance.arguments = (*args, {STATS_KEY: stats})
    stats["nfe"].append(int(nfe))
    stats["seconds"].append(round(float(seconds), 6))


@register_model("dlm")
class DlmLM(LM):
    """lm-eval model backed by a dlm :class:`~dlm.pipeline.Pipeline` (see the module docstring)."""

    def __init__(self, **model_args: Any) -> None:
        super().__init__()
        parsed = parse_model_args(model_args)
        self.options, self.config = parsed.options, parsed.pipeline
        self._init_distributed()
        self.pipe = Pipeline.from_config(self.config)
        self._variants: dict[GenSettings, Pipeline] = {}
        self._chat_rendered = False

    # --- lm-eval's process interface -------------------------------------------------------------------

    def _init_distributed(self) -> None:
        """Join torchrun's process group (WORLD_SIZE > 1): gloo on CPU, NCCL on CUDA."""
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return
        import torch.distributed as dist

        device = torch.device(self.config.run.device)
        if not dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            atexit.register(dist.destroy_process_group)
        self._rank, self._world_size = dist.get_rank(), dist.get_world_size()

    @property
    def device(self) -> torch.device:
        return self.pipe.model.device

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every process's ``tensor``, concatenated (0-d tensors stacked) in rank order."""
        if self.world_size == 1:
            return tensor
        import torch.distributed as dist

        parts = [torch.zeros_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.stack(parts) if tensor.dim() == 0 else torch.cat(parts)

    def gather_object(self, obj: Any, dst: int = 0) -> list[Any] | None:
        """Every process's ``obj`` in rank order on ``dst``; None elsewhere."""
        if self.world_size == 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world_size if self.rank == dst else None
        dist.gather_object(obj, out, dst=dst)
        return out

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    # --- text ------------------------------------------------------------------------------------------

    @property
    def tokenizer_name(self) -> str:
        path = getattr(self.config.model.config, "path", None)
        return f"dlm:{self.config.model.name}:{path or 'demo'}"

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """Render lm-eval's chat history with the checkpoint's template; prompts are then used as they are."""
        tok = self.pipe.model.tokenizer
        if tok is None:
            raise InputError("--apply_chat_template: this checkpoint has no tokenizer, so no chat template")
        self._chat_rendered = True
        return tok.render_chat(chat_history, add_generation_prompt=add_generation_prompt)

    def _encode(self, text: str) -> list[int]:
        """Token ids of a context: the config's ``chat_template`` applies unless lm-eval rendered the chat."""
        chat = bool(getattr(self.config.model.config, "chat_template", False)) and not self._chat_rendered
        return self.pipe.model.encode(text, chat=chat) if text else []

    def _seed(self, *texts: str) -> int:
        """A per-request seed: the config seed and the request's own text."""
        return (self.config.run.seed * 1_000_003 + zlib.crc32("\x00".join(texts).encode())) % (2**63)

    def _bar(self, total: int, desc: str, disable: bool):
        return tqdm(total=total, desc=desc, disable=disable or self.rank != 0, dynamic_ncols=True)

    def _cache(self, kind: str, args: tuple, result: Any) -> None:
        self.cache_hook.add_partial(kind, args, result)

    def _annotate(self, instance, nfe: int, seconds: float) -> None:
        if self.cache_hook.dbdict is None:  # --use_cache keys its entries by the arguments: leave them alone
            record_stats(instance, nfe, seconds, self.rank)

    # --- generate_until --------------------------------------------------------------------------------

    def _variant(self, settings: GenSettings) -> Pipeline:
        if settings not in self._variants:
            cfg = variant_config(self.config, settings, self.pipe.model.capabilities)
            self._variants[settings] = Pipeline(
                self.pipe.model,
                cfg.iteration.cls(cfg.iteration.config),
                cfg.decoding.cls(cfg.decoding.config),
                cfg.cache.cls(cfg.cache.config),
                seed=cfg.run.seed,
                config=cfg,
            )
        return self._variants[settings]

    def _prompt_ids(self, context: str, gen_length: int) -> torch.Tensor:
        ids = self._encode(context) or [self.pipe.model.capabilities.eos_id]
        room = self.pipe.model.capabilities.max_length - gen_length
        if room <= 0:
            raise InputError(f"gen_length {gen_length} leaves no room for a prompt in the model's context")
        return torch.tensor(ids[-room:], dtype=torch.long)  # left truncation, as lm-eval's models do

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        groups: dict[GenSettings, list[int]] = {}
        stops: list[tuple[str, ...]] = []
        ignored: set[str] = set()
        for i, req in enumerate(requests):
            settings, until = gen_settings(req.args[1])
            ignored |= set(req.args[1]) - USED_KEYS
            groups.setdefault(settings, []).append(i)
            stops.append(until)
        if ignored:
            log.warning("dlm ignores the generation settings %s", ", ".join(sorted(ignored)))
        out: list[str | None] = [None] * len(requests)
        bar = self._bar(len(requests), "dlm generate_until", disable_tqdm)
        for settings, indices in groups.items():
            pipe = self._variant(settings)
            gen_length = pipe.config.iteration.config.gen_length
            prompts = {i: self._prompt_ids(requests[i].args[0], gen_length) for i in indices}
            order = sorted(indices, key=lambda i: -prompts[i].numel())  # similar lengths share a batch
            for start in range(0, len(order), self.options.batch_size):
                chunk = order[start : start + self.options.batch_size]
                result = pipe.generate(input_ids=[prompts[i] for i in chunk])
                for row, i in enumerate(chunk):
                    text = cut_at_stop(result.texts[row], stops[i])
                    out[i] = text
                    self._cache("generate_until", requests[i].args[:2], text)
                    self._annotate(requests[i], result.nfe[row], result.seconds / len(chunk))
                bar.update(len(chunk))
        bar.close()
        return out

    # --- loglikelihood ---------------------------------------------------------------------------------

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Prompt and target ids; trailing spaces of the context move to the continuation (lm-eval's rule)."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self._encode(context + continuation)
        prompt = self._encode(context)
        target = whole[len(prompt) :] if whole[: len(prompt)] == prompt else self._encode(continuation)
        return prompt, target

    def _nll(self, prompt: list[int], target: list[int], seed: int) -> likelihood.Estimate:
        caps = self.pipe.model.capabilities
        if not target:
            return likelihood.Estimate(0.0, 0)
        if len(target) + 1 > caps.max_length:
            raise InputError(
                f"a continuation of {len(target)} tokens does not fit the model's context of {caps.max_length}"
            )
        prompt = (prompt or [caps.eos_id])[-(caps.max_length - len(target)) :]  # empty context: EOS prefix
        device = self.device
        generator = torch.Generator(device=device).manual_seed(seed)
        p = torch.tensor(prompt, dtype=torch.long, device=device)
        t = torch.tensor(target, dtype=torch.long, device=device)
        opts = self.options
        batch = min(opts.mc_batch, opts.mc_num)
        if caps.logit_shift:
            return likelihood.dream_nll(self.pipe.model, p, t, mc_num=opts.mc_num, batch=batch,
                                        generator=generator, eps=opts.sampling_eps)
        return likelihood.llada_nll(self.pipe.model, p, t, mc_num=opts.mc_num, batch=batch, generator=generator)

    def _greedy(self, prompt: list[int], target: list[int]) -> tuple[bool, int]:
        if not self.options.check_greedy or not target:
            return False, 0
        caps = self.pipe.model.capabilities
        prompt = (prompt or [caps.eos_id])[-(caps.max_length - len(target)) :]
        device = self.device
        return likelihood.greedy_matches(
            self.pipe.model,
            torch.tensor(prompt, dtype=torch.long, device=device),
            torch.tensor(target, dtype=torch.long, device=device),
        )

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        out = []
        for req in tqdm(requests, desc="dlm loglikelihood", disable=disable_tqdm or self.rank != 0):
            t0 = time.perf_counter()
            context, continuation = req.args[:2]
            prompt, target = self._encode_pair(context, continuation)
            estimate = self._nll(prompt, target, self._seed(context, continuation))
            greedy, greedy_forwards = self._greedy(prompt, target)
            answer = (-estimate.nll, greedy)
            out.append(answer)
            self._cache("loglikelihood", req.args[:2], answer)
            self._annotate(req, estimate.forwards + greedy_forwards, time.perf_counter() - t0)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """The same estimate on the whole string, after an EOS prefix (lm-eval's convention for rolling)."""
        out = []
        for req in tqdm(requests, desc="dlm loglikelihood_rolling", disable=disable_tqdm or self.rank != 0):
            t0 = time.perf_counter()
            (string,) = req.args[:1]
            estimate = self._nll([], self._encode(string), self._seed("", string))
            out.append(-estimate.nll)
            self._cache("loglikelihood_rolling", req.args[:1], -estimate.nll)
            self._annotate(req, estimate.forwards, time.perf_counter() - t0)
        return out
