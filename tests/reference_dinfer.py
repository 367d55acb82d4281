"""dInfer's own generators (inclusionAI/dInfer, ``python/dinfer/decoding``), run unmodified against dlm on tiny
random LLaDA-layout checkpoints: the harness behind docs/fidelity.md's iteration-smoothing section.

dInfer's code is never part of this repository: give a checkout (any folder holding ``python/dinfer/decoding``,
e.g. ``git archive fce4e32 python/dinfer/decoding | tar -x -C /tmp/dinfer``) in ``DLM_DINFER`` or ``--dinfer``.
Its package ``__init__`` imports its vLLM serving module, so ``dinfer`` and ``dinfer.decoding`` are registered
as bare namespace modules and only ``generate_uniform``, ``utils`` and ``parallel_strategy`` are imported;
``torch.compile`` is disabled (``TORCH_COMPILE_DISABLE=1``: dInfer compiles its threshold rule).

Its model code (vLLM, MoE kernels) cannot run here, so :class:`DInferModel` gives dInfer's generators the model
interface they call (``model(ids)``, ``model(inputs_embeds=…, use_cache=True)``, ``model(inputs_embeds=…,
past_key_values=KVCache, replace_position=(l, r))``, ``model.h2e``) computed by dlm's LLaDA network on the same
checkpoint: the comparison proves the algorithms equal; the numerics of the network are dlm's on both sides.
``h2e`` restates dInfer's ``H2Embed`` (``modeling_fused_olmoe.py``, tau 1, no sequence parallelism):
``E[x]``, and ``E[x] + w · softmax(logits) @ E`` where ``mask_index``.

Run the grid with ``python -m tests.reference_dinfer --dinfer <checkout>`` (prints the counts of
docs/fidelity.md); tests/test_smoothing.py runs a few cases when ``DLM_DINFER`` is set.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import types
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from dlm import Pipeline
from dlm.models.kv import KVBuffer
from dlm.testing import make_llada_checkpoint

MASK, EOS = 2, 0  # the character tokenizer's MASK and EOS ids


def find_dinfer(path: str | Path | None = None) -> Path | None:
    """The ``python/dinfer/decoding`` folder of a dInfer checkout (``path`` or ``$DLM_DINFER``), or None."""
    path = path or os.environ.get("DLM_DINFER")
    if not path:
        return None
    for candidate in (Path(path), Path(path) / "python" / "dinfer" / "decoding", Path(path) / "dinfer" / "decoding",
                      Path(path) / "decoding"):
        if (candidate / "generate_uniform.py").is_file() and (candidate / "utils.py").is_file():
            return candidate
    return None


def load_dinfer(decoding: Path) -> types.SimpleNamespace:
    """dInfer's ``generate_uniform``, ``utils`` and ``parallel_strategy`` modules, imported from ``decoding``."""
    os.environ["TORCH_COMPILE_DISABLE"] = "1"
    torch._dynamo.config.disable = True  # torch was imported before the variable was set
    for name, folder in (("dinfer", decoding.parent), ("dinfer.decoding", decoding)):
        if name not in sys.modules:
            module = types.ModuleType(name)
            module.__path__ = [str(folder)]
            sys.modules[name] = module
    import importlib

    gu = importlib.import_module("dinfer.decoding.generate_uniform")
    utils = importlib.import_module("dinfer.decoding.utils")
    ps = importlib.import_module("dinfer.decoding.parallel_strategy")
    # batch 1: the original drops every EOS id from the canvas; the whole canvas is compared instead
    utils.TokenArray.get_generated_tokens = lambda self: self.data
    return types.SimpleNamespace(gu=gu, utils=utils, ps=ps)


class ForwardBound(Exception):
    """The reference ran more forwards than any ending generation needs (a MASK argmax loop)."""


@dataclass
class Output:
    logits: torch.Tensor
    past_key_values: list | None = None


class DInferModel:
    """dInfer's model interface on dlm's LLaDA network (batch 1, no padding, bidirectional attention).

    Counts forwards (raising :class:`ForwardBound` past ``bound``) and says whether the last one was a refresh
    (a full forward returning K/V)."""

    def __init__(self, model, bound: int) -> None:
        self.net, self.device, self.bound = model.net, model.device, bound
        self.forwards, self.refreshed = 0, False  # refreshed: the last forward was a refresh

    def h2e(self, x, mask_index=None, logits=None, iter_cont_weight=0.0):
        """dInfer's ``H2Embed.__call__`` (tau 1, one rank), restated."""
        out = self.net.embed(x)
        if mask_index is not None and logits is not None:
            weight = self.net.embed.weight
            soft = torch.softmax(logits / 1.0, dim=-1) @ weight
            out = torch.where(mask_index.unsqueeze(-1), iter_cont_weight * soft + 1 * out, out)
        return out

    @torch.inference_mode()
    def __call__(self, input_ids=None, inputs_embeds=None, past_key_values=None, use_cache=False,
                 replace_position=None):
        self.forwards += 1
        if self.forwards > self.bound:
            raise ForwardBound
        embeds = self.net.embed(input_ids) if inputs_embeds is None else inputs_embeds
        b, q, _ = embeds.shape
        ids = torch.zeros(b, q, dtype=torch.long, device=self.device)
        full = past_key_values is None
        self.refreshed = full and use_cache
        if full:
            start, length = 0, q
            kv = KVBuffer(len(self.net.blocks), b, self.net.blocks[0].attn.n_kv_heads, q, self.net.spec.head_dim,
                          dtype=embeds.dtype, device=self.device)
        else:  # fresh K/V of [l, r) spliced into a copy of the cached ones, as KVCache.update does (not persisted)
            start, end = replace_position
            if end - start != q:
                raise ValueError(f"replace_position {replace_position} for {q} inputs")
            n = past_key_values.num_layers
            keys = torch.stack([past_key_values.get_keys(i) for i in range(n)]).clone()
            values = torch.stack([past_key_values.get_values(i) for i in range(n)]).clone()
            kv = KVBuffer._wrap(keys, values)
            length = keys.shape[3]
        positions = torch.arange(start, start + q, device=self.device)[None, :].expand(b, q)
        logits = self.net(ids, positions, None, kv=kv, start=start, key_end=length, embeds=embeds)
        pkv = None
        if use_cache and full:
            pkv = [t for layer in range(kv.keys.shape[0]) for t in (kv.keys[layer], kv.values[layer])]
        return Output(logits, pkv)


def with_zero_mask_row(src: Path, dst: Path) -> Path:
    """A copy of checkpoint ``src`` whose output-head row of MASK is zero (its MASK logit is 0: practically never
    the argmax), the ``_nomask`` variants of docs/fidelity.md."""
    import shutil

    if (dst / "config.json").is_file():
        return dst
    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    tensors["model.transformer.ff_out.weight"][MASK] = 0
    save_file(tensors, str(dst / "model.safetensors"))
    return dst


def checkpoints(root: Path) -> dict[str, Path]:
    """docs/fidelity.md's checkpoints: fid_a (2 layers, d 32, GQA 4/2, seed 1), fid_b (3 layers, d 64, seed 5)
    and their ``_nomask`` variants."""
    a = root / "fid_a"
    b = root / "fid_b"
    if not (a / "config.json").is_file():
        make_llada_checkpoint(a, n_kv_heads=2, seed=1)
    if not (b / "config.json").is_file():
        make_llada_checkpoint(b, n_layers=3, d_model=64, seed=5)
    return {"fid_a": a, "fid_b": b, "fid_a_nomask": with_zero_mask_row(a, root / "fid_a_nomask"),
            "fid_b_nomask": with_zero_mask_row(b, root / "fid_b_nomask")}


@dataclass(frozen=True)
class Case:
    prompt: tuple[int, ...]
    gen_length: int
    block_length: int
    decoding: dict  # dlm's decoding section: threshold / credit / hierarchical
    cache: dict  # dlm's cache section: none / prefix / dual / vicinity
    smoothing: dict  # cont_weight, cont_weight_init, cont_weight_growth, threshold_decay


def reference_decoder(dinfer, decoding: dict):
    ps = dinfer.ps
    name, tau = decoding["name"], decoding["threshold"]
    if name == "threshold":
        return ps.ThresholdParallelDecoder(0, tau, mask_id=MASK, eos_id=EOS, use_float64=True)
    if name == "credit":
        return ps.CreditThresholdParallelDecoder(
            credit_alpha=decoding.get("alpha", 0.7), boost_gamma=decoding.get("power", 0.2),
            decay_beta=decoding.get("decay", 0.8), temperature=0, threshold=tau, mask_id=MASK, eos_id=EOS,
            use_float64=True)
    if name == "hierarchical":
        return ps.HierarchyDecoder(0, mask_id=MASK, eos_id=EOS, threshold=tau,
                                   low_threshold=decoding.get("low_threshold", 0.4))
    raise ValueError(f"no dInfer decoder for {name!r}")


def run_reference(dinfer, model, case: Case) -> dict:
    """dInfer's ``IterSmoothDiffusionLLM`` (caches none / prefix / dual) or
    ``IterSmoothWithVicinityCacheDiffusionLLM`` (dual cache with a vicinity) on ``case``: its generation region,
    ``num_forwards``, the forwards whose block had no mask left (wasted), and its double refreshes."""
    gu, utils = dinfer.gu, dinfer.utils
    shim = DInferModel(model, bound=4 * case.gen_length + 8)
    decoder = reference_decoder(dinfer, case.decoding)
    wasted, mask_argmax, refreshes = [0], [0], {}
    decode = decoder.decode

    def counting(logits, block_start, block_end, x, iter_threshold=None):
        refreshes[block_start] = refreshes.get(block_start, 0) + shim.refreshed
        masked = x[:, block_start:block_end] == MASK
        wasted[0] += not bool(masked.any())
        mask_argmax[0] += bool((masked & (logits.argmax(dim=-1) == MASK)).any())
        return decode(logits, block_start, block_end, x, iter_threshold)

    decoder.decode = counting
    blocks = utils.BlockIteratorFactory(start_block_align=False)
    cache = case.cache["name"]
    s = case.smoothing
    if cache == "vicinity":
        dllm = gu.IterSmoothWithVicinityCacheDiffusionLLM(
            shim, decoder, blocks, cache_factory=utils.KVCacheFactory("dual"), maximum_unroll=1,
            prefix_look=case.cache["prefix_look"], after_look=case.cache["after_look"],
            warmup_steps=case.cache["warmup_steps"], early_stop=False, **s)
    else:
        factory = None if cache == "none" else utils.KVCacheFactory(cache)
        dllm = gu.IterSmoothDiffusionLLM(shim, decoder, blocks, early_stop=False, cache_factory=factory,
                                         maximum_unroll=1, **s)
    prompt = torch.tensor([case.prompt], dtype=torch.long)
    try:
        x = dllm.generate(prompt, gen_length=case.gen_length, block_length=case.block_length)
    except ForwardBound:
        return {"ended": False, "mask_argmax": mask_argmax[0]}
    return {"ended": True, "tokens": x[0, len(case.prompt):].tolist(), "nfe": dllm.num_forwards,
            "wasted": wasted[0], "double_refreshes": sum(n > 1 for n in refreshes.values()),
            "mask_argmax": mask_argmax[0]}


class WastedForwards(Pipeline):
    """dlm with dInfer's wasted forward added, to show it is the only difference where it happens: after a
    refresh (not a warm-up forward) that completes its block, dInfer's iteration still runs its cached forward on
    the complete block (decoding nothing, but counting a forward and recording soft inputs). Batch 1."""

    def step(self, state) -> None:
        from dlm.cache.vicinity import VicinityCache
        from dlm.iteration.smoothing import smoothing_weight
        from dlm.messages import SoftInputs

        window = self.iteration.window(state)
        forwards = int(state.nfe[0])
        plan = self.cache.plan(state, window).for_window(window)
        logits = self.model.forward(state, plan)
        state.count_forward(window.rows)
        state.commit(window, self.decoding.select(state, window, logits, state.rng))
        warmup = isinstance(self.cache, VicinityCache) and forwards < self.cache.config.warmup_steps
        block = state.masked()[0, int(window.block_start[0]) : int(window.block_end[0])]
        if plan.refresh and plan.kv is not None and not warmup and not bool(block.any()):
            later = replace(window.geometry, step=window.geometry.step + 1)
            masked = state.masked()[window.rows]
            soft = SoftInputs(state.progress.soft, feed=masked, record=masked,
                              scale=smoothing_weight(self.iteration.config, state.nfe[window.rows].double()))
            wasted = replace(window, geometry=later).extend(soft)
            self.model.forward(state, self.cache.plan(state, wasted).for_window(wasted))
            state.count_forward(window.rows)
        self.iteration.advance(state)


def dlm_pipeline(ckpt: Path, case: Case, model=None, cls=Pipeline) -> Pipeline:
    iteration = {"name": "smoothing", "gen_length": case.gen_length, "block_length": case.block_length,
                 "steps": case.gen_length, **case.smoothing}
    return cls.from_config({"model": {"name": "llada", "path": str(ckpt)}, "iteration": iteration,
                            "decoding": case.decoding, "cache": case.cache, "dtype": "float64"}, model=model)


def run_dlm(ckpt: Path, case: Case, model=None, cls=Pipeline) -> dict:
    out = dlm_pipeline(ckpt, case, model, cls).generate(input_ids=[list(case.prompt)])
    return {"tokens": out.generated[0].tolist(), "nfe": out.nfe[0]}


def compare(dinfer, ckpt: Path, case: Case, model) -> str:
    """``same`` (tokens, and NFE = the reference's minus its wasted forwards), ``same with wasted`` (different,
    but the same tokens and NFE once dlm runs dInfer's wasted forwards too: :class:`WastedForwards`), or why not:
    ``loops`` (the reference never ends), ``mask argmax`` (the reference's argmax at a masked position of its
    block was MASK, which dlm never proposes), ``double refresh`` (dInfer refreshes twice where warm-up ends in a
    block > 0), ``DIFFERENT`` (none of these)."""
    ref = run_reference(dinfer, model, case)
    if not ref["ended"]:
        return "loops"
    ours = run_dlm(ckpt, case, model)
    if ours["tokens"] == ref["tokens"] and ours["nfe"] == ref["nfe"] - ref["wasted"]:
        return "same"
    if ref["wasted"]:
        emulated = run_dlm(ckpt, case, model, WastedForwards)
        if emulated["tokens"] == ref["tokens"] and emulated["nfe"] == ref["nfe"]:
            return "same with wasted"
    for why in ("mask_argmax", "double_refreshes"):
        if ref[why]:
            return why.replace("_", " ")
    return "DIFFERENT"


SMOOTHING = ({}, {"cont_weight": 3.0, "cont_weight_init": 2.0, "threshold_decay": 0.1})
DECODINGS = ({"name": "threshold", "threshold": 0.9}, {"name": "threshold", "threshold": 0.05},
             {"name": "credit", "threshold": 0.05}, {"name": "hierarchical", "threshold": 0.9, "low_threshold": 0.05})
CACHES = ({"name": "none"}, {"name": "prefix"}, {"name": "dual"},
          {"name": "vicinity", "prefix_look": 2, "after_look": 3, "warmup_steps": 2})
SHAPES = ((16, 4), (16, 8), (24, 8))


def grid(seed: int = 0) -> list[Case]:
    """Prompt lengths 3 and 7 (ids 6..85), the shapes, decodings, caches and smoothing settings above."""
    g = torch.Generator().manual_seed(seed)
    prompts = [tuple(torch.randint(6, 86, (n,), generator=g).tolist()) for n in (3, 7)]
    return [Case(p, gen, block, d, c, s) for p, (gen, block), d, c, s
            in itertools.product(prompts, SHAPES, DECODINGS, CACHES, SMOOTHING)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dinfer", help="a dInfer checkout (default: $DLM_DINFER)")
    parser.add_argument("--checkpoints", default="/tmp/dlm-fidelity", help="where the checkpoints are written")
    parser.add_argument("--only", nargs="*", help="checkpoint names to run (default: all four)")
    args = parser.parse_args(argv)
    decoding = find_dinfer(args.dinfer)
    if decoding is None:
        raise SystemExit("give a dInfer checkout (a folder with python/dinfer/decoding) in --dinfer or DLM_DINFER")
    dinfer = load_dinfer(decoding)
    torch.set_num_threads(1)
    from dlm.models.llada import LLaDAModel

    for name, ckpt in checkpoints(Path(args.checkpoints)).items():
        if args.only and name not in args.only:
            continue
        model = LLaDAModel.load(LLaDAModel.Config(path=ckpt), dtype=torch.float64, device=torch.device("cpu"))
        counts: dict[str, dict[str, int]] = {}
        soft_matters = 0
        for case in grid():
            verdict = compare(dinfer, ckpt, case, model)
            for key in ("all", case.cache["name"]):
                counts.setdefault(key, {}).setdefault(verdict, 0)
                counts[key][verdict] += 1
            if verdict == "DIFFERENT":
                print("DIFFERENT", name, case, flush=True)
            hard = replace(case, smoothing={**case.smoothing, "cont_weight": 0.0, "cont_weight_init": 0.0})
            soft_matters += run_dlm(ckpt, case, model)["tokens"] != run_dlm(ckpt, hard, model)["tokens"]
        for key, found in counts.items():
            print(f"{name:13s} {key:9s} {sum(found.values()):4d} cases: {found}", flush=True)
        print(f"{name:13s} soft inputs changed dlm's tokens in {soft_matters} cases (vs the same schedule with "
              "weight 0)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
