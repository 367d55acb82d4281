"""Slow, obviously-correct float64 statements of LLaDA2: the BailingMoeV2 forward, LLaDA2.0's block loop and
LLaDA2.1's editing loop, written from the architecture and the released ``generate`` functions.

Independent of dlm's transformer, MoE dispatch, KV buffer, plans, iteration managers and strategies: it reads the
checkpoint's config.json and tensors itself, computes one token at a time where that is clearer, runs every expert
on every token, and decodes with plain Python loops over one prompt. The architecture, as LLaDA2.0's paper
(arXiv 2512.15745) and its released ``modeling_llada2_moe.py`` describe it:

    x = embed(ids)
    per layer:  h = rms(x);  [q | k | v] = h Wqkv (+b)          (one fused projection: q heads, k heads, v heads)
                q, k = rms_head(q), rms_head(k)                  (use_qk_norm)
                q, k rotated by RoPE on their first partial_rotary_factor * head_dim dims (rotate_half)
                x = x + softmax(q k^T / sqrt(head_dim) + block-causal mask) v Wo (+b)        (GQA)
                h = rms(x)
                layer < first_k_dense_replace: x = x + swiglu(h)
                else: s = sigmoid_fp32(h Wgate);  b = s + expert_bias
                      groups of E / n_group experts, scored by the sum of their two best b; the topk_group best kept
                      chosen = the top_k best b among the kept groups' experts
                      w_e = s_e / sum_chosen s (top_k > 1) * routed_scaling_factor, float32
                      x = x + float64(sum over the chosen e, in choice order, of float32(swiglu_e(h)) * w_e)
                          + swiglu_shared(h)
    logits = rms(x) Whead        (Whead = embed when tied)

RMSNorm, the router and the weighted sum of the experts compute in float32 as the released code does (so does
dlm); ``torch.topk`` is the choice rule itself (the released code's), called per token. The block-causal mask is
the one LLaDA2's ``generate`` builds: a position sees its own block of ``block`` positions and every earlier one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file


class NaiveLLaDA2:
    """Float64 forward of a LLaDA2 checkpoint (no cache) under block-causal attention of ``block`` positions."""

    def __init__(self, ckpt: Path, *, block: int) -> None:
        cfg = json.loads((Path(ckpt) / "config.json").read_text())
        self.cfg, self.block = cfg, block
        self.t = {k: v.double() for k, v in load_file(str(Path(ckpt) / "model.safetensors")).items()}
        self.mask_id, self.eos_id = cfg["mask_token_id"], cfg["eos_token_id"]
        self.h, self.kvh = cfg["num_attention_heads"], cfg["num_key_value_heads"]
        self.hd = cfg["hidden_size"] // self.h
        self.rot = int(self.hd * cfg["partial_rotary_factor"])

    def _norm(self, x, w):
        x32 = x.float()
        return w * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.cfg["rms_norm_eps"])).double()

    def _rope(self, x, pos):  # x [H, n, D], pos [n]: the first self.rot dims rotated, the rest kept
        r = self.rot
        inv = 1.0 / (self.cfg["rope_theta"] ** (torch.arange(0, r, 2).float() / r))
        ang = torch.outer(pos.float(), inv)
        ang = torch.cat([ang, ang], -1)
        cos, sin = ang.cos().double(), ang.sin().double()
        xr = x[..., :r]
        rot = torch.cat([-xr[..., r // 2 :], xr[..., : r // 2]], -1)
        return torch.cat([xr * cos + rot * sin, x[..., r:]], -1)

    def _swiglu(self, x, prefix):
        return (F.silu(x @ self.t[prefix + "gate_proj.weight"].T) * (x @ self.t[prefix + "up_proj.weight"].T)) \
            @ self.t[prefix + "down_proj.weight"].T

    def choose(self, h, layer: int) -> list[tuple[list[int], list[float]]]:
        """Per token of ``h`` [n, d]: the chosen experts (in ``torch.topk`` order) and their float32 weights."""
        c, p = self.cfg, f"model.layers.{layer}.mlp.gate."
        s = torch.sigmoid(F.linear(h.float(), self.t[p + "weight"].float()))  # [n, E] float32
        b = s + self.t[p + "expert_bias"]
        size = c["num_experts"] // c["n_group"]
        out = []
        for i in range(h.shape[0]):
            group_scores = torch.stack([b[i, g * size : (g + 1) * size].topk(2).values.sum()
                                        for g in range(c["n_group"])])
            kept = torch.topk(group_scores, c["topk_group"], sorted=False).indices.tolist()
            allowed = torch.full_like(b[i], -math.inf)
            for g in kept:
                allowed[g * size : (g + 1) * size] = b[i, g * size : (g + 1) * size]
            chosen = torch.topk(allowed, c["num_experts_per_tok"]).indices
            w = s[i, chosen]
            if len(chosen) > 1:
                w = w / (w.sum() + 1e-20)
            out.append((chosen.tolist(), w * c["routed_scaling_factor"]))
        return out

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits [n, V] of the tokens ``ids`` [n] at positions 0..n-1."""
        c = self.cfg
        n = ids.numel()
        pos = torch.arange(n)
        block = pos // self.block
        allowed = block[:, None] >= block[None, :]  # [n, n]: a query sees its own block and earlier ones
        x = self.t["model.word_embeddings.weight"][ids]
        for i in range(c["num_hidden_layers"]):
            p = f"model.layers.{i}."
            a = p + "attention."
            h = self._norm(x, self.t[p + "input_layernorm.weight"])
            qkv = h @ self.t[a + "query_key_value.weight"].T
            if c["use_qkv_bias"]:
                qkv = qkv + self.t[a + "query_key_value.bias"]
            qkv = qkv.view(n, self.h + 2 * self.kvh, self.hd)
            q, k, v = qkv[:, : self.h], qkv[:, self.h : self.h + self.kvh], qkv[:, self.h + self.kvh :]
            if c["use_qk_norm"]:
                q = self._norm(q, self.t[a + "query_layernorm.weight"])
                k = self._norm(k, self.t[a + "key_layernorm.weight"])
            q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)
            q, k = self._rope(q, pos), self._rope(k, pos)
            rep = self.h // self.kvh
            k, v = k.repeat_interleave(rep, 0), v.repeat_interleave(rep, 0)
            scores = (q @ k.transpose(1, 2) / math.sqrt(self.hd)).masked_fill(~allowed, -math.inf)
            o = (torch.softmax(scores, -1) @ v).transpose(0, 1).reshape(n, -1) @ self.t[a + "dense.weight"].T
            x = x + (o + self.t[a + "dense.bias"] if c["use_bias"] else o)
            h = self._norm(x, self.t[p + "post_attention_layernorm.weight"])
            if i < c["first_k_dense_replace"]:
                x = x + self._swiglu(h, p + "mlp.")
                continue
            out = torch.zeros_like(x)
            for t, (chosen, weights) in enumerate(self.choose(h, i)):
                terms = torch.stack([self._swiglu(h[t], f"{p}mlp.experts.{e}.").float() for e in chosen])
                out[t] = (terms * weights[:, None]).sum(0).double()
            if c["num_shared_experts"]:
                out = out + self._swiglu(h, p + "mlp.shared_experts.")
            x = x + out
        x = self._norm(x, self.t["model.norm.weight"])
        head = self.t.get("lm_head.weight", self.t["model.word_embeddings.weight"])
        return x @ head.T


def _propose(model: NaiveLLaDA2, ids: torch.Tensor, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy tokens and float64 confidences of positions ``[lo, hi)`` from a forward of ``ids`` (MASK never
    proposed; its logit still counts in the softmax, dlm's convention)."""
    logits = model.logits(ids)[lo:hi].double()
    probs = torch.softmax(logits, -1)
    tokens = logits.clone()
    tokens[:, model.mask_id] = -math.inf
    tokens = tokens.argmax(-1)
    return tokens, probs.gather(-1, tokens[:, None])[:, 0]


def _fill(conf: torch.Tensor, masked: torch.Tensor, threshold: float, count: int) -> torch.Tensor:
    """LLaDA2's mask-to-token rule: every masked position above ``threshold`` when there are at least ``count``
    of them, else the ``count`` most confident masked positions (fewer if fewer are masked)."""
    conf = torch.where(masked, conf, -math.inf)
    high = (conf > threshold) & masked
    if int(high.sum()) >= count:
        return high
    chosen = torch.zeros_like(masked)
    chosen[torch.topk(conf, min(count, int(masked.sum()))).indices] = True
    return chosen


def _schedule(block: int, steps: int) -> list[int]:
    return [block // steps + (1 if s < block % steps else 0) for s in range(steps)]


def _answer(x: torch.Tensor, prompt_length: int, gen_length: int, eos_id: int) -> list[int]:
    gen = x[prompt_length : prompt_length + gen_length].tolist()
    return gen[: gen.index(eos_id) + 1] if eos_id in gen else gen


def _final(x: torch.Tensor, prompt_length: int, mask_id: int, eos_id: int) -> bool:
    """The first end token of the generation has no mask before it: the answer can no longer change."""
    gen = x[prompt_length:].tolist()
    return eos_id in gen and mask_id not in gen[: gen.index(eos_id)]


def naive_generate_llada20(model: NaiveLLaDA2, prompt: list[int], *, gen_length: int, steps: int,
                           threshold: float) -> tuple[list[int], int, int]:
    """LLaDA2.0's ``generate`` at temperature 0, batch 1: the canvas padded to whole blocks; per block, ``steps``
    forwards of everything up to the block's end, each committing :func:`_fill` with the count of the even
    schedule of the block over ``steps``; then the next block, or the end when the generation holds an end token.

    Returns the answer (cut after the first end token), the reference's NFE, and the NFE after which the answer
    could no longer change (dlm stops there: the first end token has no mask before it)."""
    bl, mask = model.block, model.mask_id
    p = len(prompt)
    total = -(-(p + gen_length) // bl) * bl
    x = torch.full((total,), mask)
    x[:p] = torch.tensor(prompt)
    nfe, final = 0, None
    for b in range(p // bl, total // bl):
        lo, hi = b * bl, (b + 1) * bl
        for count in _schedule(bl, steps):
            masked = x[lo:hi] == mask
            if not bool(masked.any()):
                break
            tokens, conf = _propose(model, x[:hi], lo, hi)
            nfe += 1
            x[lo:hi] = torch.where(_fill(conf, masked, threshold, count), tokens, x[lo:hi])
            if final is None and _final(x, p, mask, model.eos_id):
                final = nfe
        if model.eos_id in x[p:hi].tolist():
            break
    return _answer(x, p, gen_length, model.eos_id), nfe, final if final is not None else nfe


def naive_generate_llada21(model: NaiveLLaDA2, prompt: list[int], *, gen_length: int, threshold: float,
                           editing_threshold: float | None, max_post_steps: int, count: int = 1,
                           ) -> tuple[list[int], int, int, int]:
    """LLaDA2.1's editing ``generate`` at temperature 0, batch 1, block by block: each forward fills masked
    positions by :func:`_fill` (``count`` = ``num_to_transfer``) and rewrites every placed, non-prompt token of the
    block whose proposal differs with confidence above ``editing_threshold`` (None: never). Once no mask is left at
    a step's start, the step is a post step; the block ends after a step that started without masks and edited
    nothing, or before the forward of post step ``max_post_steps + 1``.

    Returns the answer, the reference's NFE (every block), the NFE after which the answer could no longer change
    (the end of the block holding the first end token, where dlm stops), and the number of edits made."""
    bl, mask = model.block, model.mask_id
    p = len(prompt)
    total = -(-(p + gen_length) // bl) * bl
    x = torch.full((total,), mask)
    x[:p] = torch.tensor(prompt)
    nfe, final, edits = 0, None, 0
    for b in range(p // bl, total // bl):
        lo, hi = b * bl, (b + 1) * bl
        placed_by_prompt = torch.arange(lo, hi) < p
        post = 0
        while True:
            masked = x[lo:hi] == mask
            if not bool(masked.any()):
                post += 1
            if post > max_post_steps:
                break
            tokens, conf = _propose(model, x[:hi], lo, hi)
            nfe += 1
            fill = _fill(conf, masked, threshold, count) if bool(masked.any()) else torch.zeros_like(masked)
            edit = torch.zeros_like(masked)
            if editing_threshold is not None:
                edit = ~masked & ~placed_by_prompt & (conf > editing_threshold) & (tokens != x[lo:hi])
            edits += int(edit.sum())
            x[lo:hi] = torch.where(fill | edit, tokens, x[lo:hi])
            if not bool(masked.any()) and not bool(edit.any()):
                break
        if final is None and _final(x, p, mask, model.eos_id):
            final = nfe
    return _answer(x, p, gen_length, model.eos_id), nfe, final if final is not None else nfe, edits
