"""A slow, obviously-correct statement of Fast-dLLM's LLaDA generators, written from the paper (Wu et al., 2025, arXiv 2505.22618) and the released code as docs/fidelity.md describes.

Independent of dlm's model, KV buffer, plans and selection code: it reads the checkpoint tensors itself,
runs one prompt at a time like the original, recomputes everything with plain loops, and emulates the
prefix and dual caches by *definition* (stale K/V of the block's first forward substituted per layer).
Used by tests to pin dlm's fast path to the reference semantics (fast-dllm.md §1–§4).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file


class NaiveLLaDA:
    """Float64 forward of a LLaDA checkpoint; optionally with K/V of some positions taken from a cache."""

    def __init__(self, ckpt: Path) -> None:
        cfg = json.loads((Path(ckpt) / "config.json").read_text())
        self.cfg = cfg
        self.t = {k.removeprefix("model.transformer."): v.double() for k, v in load_file(str(Path(ckpt) / "model.safetensors")).items()}
        self.mask_id = cfg["mask_token_id"]
        self.h, self.kvh = cfg["n_heads"], cfg["n_kv_heads"]
        self.hd = cfg["d_model"] // self.h

    def _norm(self, x, w):
        x32 = x.float()
        return w * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.cfg["rms_norm_eps"])).double()

    def _rope(self, x, pos):  # x [H, n, D], pos [n]
        d = self.hd
        inv = 1.0 / (self.cfg["rope_theta"] ** (torch.arange(0, d, 2).float() / d))
        ang = torch.outer(pos.float(), inv)
        ang = torch.cat([ang, ang], -1)
        cos, sin = ang.cos().double(), ang.sin().double()
        rot = torch.cat([-x[..., d // 2 :], x[..., : d // 2]], -1)
        return x * cos + rot * sin

    def forward(self, ids: torch.Tensor, start: int, cache=None, replace: tuple[int, int] | None = None):
        """Logits [n, V] of tokens ``ids`` placed at positions start..start+n-1.

        cache: per-layer (K, V) [H, L, D] of the whole canvas from an earlier forward. With ``replace=None``
        the keys are cache[:start] + fresh (prefix cache); with ``replace=(s, e)`` they are the cache with
        slots s..e overwritten by the fresh ones (dual cache). Returns (logits, per-layer fresh (K, V)).
        """
        n = ids.numel()
        pos = torch.arange(start, start + n)
        x = self.t["wte.weight"][ids]
        kvs = []
        for i in range(self.cfg["n_layers"]):
            b = f"blocks.{i}."
            hN = self._norm(x, self.t[b + "attn_norm.weight"])
            q = (hN @ self.t[b + "q_proj.weight"].T).view(n, self.h, self.hd).transpose(0, 1)
            k = (hN @ self.t[b + "k_proj.weight"].T).view(n, self.kvh, self.hd).transpose(0, 1)
            v = (hN @ self.t[b + "v_proj.weight"].T).view(n, self.kvh, self.hd).transpose(0, 1)
            q, k = self._rope(q, pos), self._rope(k, pos)
            kvs.append((k, v))
            if cache is not None:
                ck, cv = cache[i]
                if replace is None:
                    k, v = torch.cat([ck[:, :start], k], 1), torch.cat([cv[:, :start], v], 1)
                else:
                    k, v = ck.clone(), cv.clone()
                    k[:, replace[0] : replace[1]], v[:, replace[0] : replace[1]] = kvs[-1]
            rep = self.h // self.kvh
            k, v = k.repeat_interleave(rep, 0), v.repeat_interleave(rep, 0)
            att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(self.hd), -1)
            o = (att @ v).transpose(0, 1).reshape(n, -1)
            x = x + o @ self.t[b + "attn_out.weight"].T
            hN = self._norm(x, self.t[b + "ff_norm.weight"])
            g = hN @ self.t[b + "ff_proj.weight"].T
            x = x + (torch.nn.functional.silu(g) * (hN @ self.t[b + "up_proj.weight"].T)) @ self.t[b + "ff_out.weight"].T
        x = self._norm(x, self.t["ln_f.weight"])
        head = self.t["ff_out.weight"] if "ff_out.weight" in self.t else self.t["wte.weight"]
        return x @ head.T, kvs


def schedule(m: int, steps: int) -> list[int]:
    return [m // steps + (1 if i < m % steps else 0) for i in range(steps)]


def choose(conf: list[float], quota: int, threshold, factor) -> list[int]:
    """Indices (into conf) committed by top-k / threshold / factor, written as plain loops."""
    order = sorted(range(len(conf)), key=lambda i: -conf[i])
    if factor is not None:
        m = len(order)
        n = m
        for k in range(1, m + 1):
            tau = -1.0 if k == 1 else 1 - factor / (k + 1)
            if conf[order[k - 1]] < tau:
                n = m if k == m else k - 1
                break
        return order[:n]
    if threshold is not None:
        return [order[0]] + [i for i in order[1:] if conf[i] >= threshold]
    return order[: max(quota, 1)]


def reference_generate(model: NaiveLLaDA, prompt: list[int], *, steps, gen_length, block_length,
                       cache: str = "none", threshold=None, factor=None):
    """Tokens and NFE of Fast-dLLM's generate / generate_with_prefix_cache / generate_with_dual_cache
    (temperature 0, low-confidence), minus the wasted forward after a block completes at its refresh and
    with MASK never proposed."""
    x = list(prompt) + [model.mask_id] * gen_length
    lp = len(prompt)
    blocks = gen_length // block_length
    spb = steps // blocks
    nfe = 0
    for b in range(blocks):
        s, e = lp + b * block_length, lp + (b + 1) * block_length
        sched = schedule(sum(t == model.mask_id for t in x[s:e]), spb)
        kv, i = None, 0
        while any(t == model.mask_id for t in x[s:e]):
            ids = torch.tensor(x)
            if cache == "none" or i == 0:
                logits, kv_new = model.forward(ids, 0)
                logits = logits[s:e]
                if i == 0:
                    kv = kv_new
            elif cache == "prefix":
                logits = model.forward(ids[s:], s, kv)[0][: e - s]
            else:
                logits = model.forward(ids[s:e], s, kv, replace=(s, e))[0]
            nfe += 1
            p = torch.softmax(logits, -1)
            masked = [j for j in range(e - s) if x[s + j] == model.mask_id]
            props, conf = {}, []
            for j in masked:
                scores = logits[j].clone()
                scores[model.mask_id] = -math.inf
                tok = int(scores.argmax())
                props[j] = tok
                conf.append(float(p[j, tok]))
            quota = sched[i] if i < spb else len(masked)
            for idx in choose(conf, quota, threshold, factor):
                x[s + masked[idx]] = props[masked[idx]]
            i += 1
    return x[lp:], nfe
