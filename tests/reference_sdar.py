"""A slow, obviously-correct statement of SDAR's forward and block loop (Cheng et al., 2025, arXiv 2510.06303),
written from the released ``modeling_sdar.py`` and ``generate.py``'s ``block_diffusion_generate`` as
docs/fidelity.md describes.

Independent of dlm's model, KV buffer, plans, iteration and selection code: it reads the checkpoint tensors
itself, runs one prompt at a time like the original, writes attention out per head with an explicit
block-causal mask, and recomputes the whole canvas at every forward (block-causal attention makes a finished
block's K/V final, so this is what the released KV cache computes). Its loop is the released one: the canvas
rounded up to whole blocks, the prompt's whole blocks prefilled, per block up to ``steps + 1`` iterations that
either denoise (a forward, a quota ``get_num_transfer_tokens(block_length, steps)[step]``) or, once the block
holds no mask, store its K/V (a forward), and a stop check after each block. Two deliberate differences, the
ones dlm makes (docs/fidelity.md): MASK is never proposed, and a step's top-k never picks more positions than
the block has masks (the released ``torch.topk`` then also rewrites unmasked positions).

The sparse-MoE checkpoints (SDAR-30B-A3B, ``model_type: sdar_moe``) are Qwen3-MoE under the same attention, and
their modeling file is not public: a sparse layer's MLP here restates transformers 4.x's
``Qwen3MoeSparseMoeBlock`` (layer ``i`` sparse iff ``i not in mlp_only_layers and num_experts > 0 and (i + 1) %
decoder_sparse_step == 0``; ``softmax(h Wgate, dtype=float32)``, ``torch.topk``, divided by the kept sum when
``norm_topk_prob``, cast to the hidden dtype; each expert's weighted output added in ascending expert order), with
every expert run on every token and weighted by a dense vector of router weights (zero where not chosen, which
adds exactly nothing).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file


class NaiveSDAR:
    """Float64 forward of an SDAR (Qwen3- or Qwen3-MoE-layout) checkpoint under block-causal attention."""

    def __init__(self, ckpt: Path) -> None:
        ckpt = Path(ckpt)
        self.cfg = cfg = json.loads((ckpt / "config.json").read_text())
        t = {}
        for f in sorted(ckpt.glob("*.safetensors")):
            t.update(load_file(str(f)))
        self.t = {k.removeprefix("model."): v.double() for k, v in t.items()}
        self.mask_id = cfg["mask_token_id"]
        self.h, self.kvh, self.hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]

    def _norm(self, x, w):  # Qwen3RMSNorm: float32 statistics, the weight applied in the model dtype
        x32 = x.float()
        return w * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.cfg["rms_norm_eps"])).double()

    def _rope(self, x, pos):  # x [H, n, D]; NeoX rotate_half, float32 tables as transformers builds them
        d = self.hd
        inv = 1.0 / (self.cfg["rope_theta"] ** (torch.arange(0, d, 2).float() / d))
        ang = torch.outer(pos.float(), inv)
        ang = torch.cat([ang, ang], -1)
        cos, sin = ang.cos().double(), ang.sin().double()
        rot = torch.cat([-x[..., d // 2 :], x[..., : d // 2]], -1)
        return x * cos + rot * sin

    def _swiglu(self, a, prefix):
        g = torch.nn.functional.silu(a @ self.t[prefix + "gate_proj.weight"].T)
        return (g * (a @ self.t[prefix + "up_proj.weight"].T)) @ self.t[prefix + "down_proj.weight"].T

    def sparse(self, i: int) -> bool:
        """Qwen3MoeDecoderLayer's rule: is layer ``i``'s MLP a sparse MoE block?"""
        c = self.cfg
        return (i not in c.get("mlp_only_layers", []) and c.get("num_experts", 0) > 0
                and (i + 1) % c.get("decoder_sparse_step", 1) == 0)

    def routing_weights(self, a, i: int) -> torch.Tensor:
        """Dense router weights [n, E] of layer ``i`` (zero for the experts a token does not go to)."""
        probs = torch.softmax(a @ self.t[f"layers.{i}.mlp.gate.weight"].T, dim=-1, dtype=torch.float32)
        kept, chosen = torch.topk(probs, self.cfg["num_experts_per_tok"], dim=-1)
        if self.cfg.get("norm_topk_prob", False):
            kept = kept / kept.sum(dim=-1, keepdim=True)
        return torch.zeros(probs.shape, dtype=a.dtype).scatter(1, chosen, kept.to(a.dtype))

    def _moe(self, a, i: int):
        weights = self.routing_weights(a, i)  # [n, E]
        out = torch.zeros_like(a)
        for e in range(self.cfg["num_experts"]):  # every expert on every token, weight 0 where not chosen
            out = out + weights[:, e : e + 1] * self._swiglu(a, f"layers.{i}.mlp.experts.{e}.")
        return out

    def logits(self, ids: list[int], block_length: int) -> torch.Tensor:
        """[n, V] logits of the canvas ``ids`` (positions 0..n-1): query q sees key k iff q//bs >= k//bs."""
        n = len(ids)
        pos = torch.arange(n)
        blk = pos // block_length
        allowed = blk[:, None] >= blk[None, :]
        x = self.t["embed_tokens.weight"][torch.tensor(ids)]
        for i in range(self.cfg["num_hidden_layers"]):
            p = f"layers.{i}."
            a = self._norm(x, self.t[p + "input_layernorm.weight"])
            q = (a @ self.t[p + "self_attn.q_proj.weight"].T).view(n, self.h, self.hd)
            k = (a @ self.t[p + "self_attn.k_proj.weight"].T).view(n, self.kvh, self.hd)
            v = (a @ self.t[p + "self_attn.v_proj.weight"].T).view(n, self.kvh, self.hd)
            q = self._norm(q, self.t[p + "self_attn.q_norm.weight"]).transpose(0, 1)  # per-head QK norm
            k = self._norm(k, self.t[p + "self_attn.k_norm.weight"]).transpose(0, 1)
            q, k = self._rope(q, pos), self._rope(k, pos)
            heads = []
            for hq in range(self.h):
                hk = hq // (self.h // self.kvh)  # the KV head of this query head's group
                s = (q[hq] @ k[hk].T) / math.sqrt(self.hd)
                s = s.masked_fill(~allowed, -math.inf)
                heads.append(torch.softmax(s, -1) @ v.transpose(0, 1)[hk])
            o = torch.stack(heads, 1).reshape(n, self.h * self.hd)
            x = x + o @ self.t[p + "self_attn.o_proj.weight"].T
            a = self._norm(x, self.t[p + "post_attention_layernorm.weight"])
            x = x + (self._moe(a, i) if self.sparse(i) else self._swiglu(a, p + "mlp."))
        x = self._norm(x, self.t["norm.weight"])
        head = self.t.get("lm_head.weight", self.t["embed_tokens.weight"])
        return x @ head.T


def transfer_tokens(block_length: int, steps: int) -> list[int]:
    """SDAR's ``get_num_transfer_tokens``: ``block_length`` spread over ``steps``, the remainder first."""
    return [block_length // steps + (1 if i < block_length % steps else 0) for i in range(steps)]


def reference_sdar_generate(model: NaiveSDAR, prompt: list[int], *, gen_length: int, block_length: int, steps: int,
                            rule: str, tau: float = 0.9, stop: list[int] | None = None):
    """SDAR's ``block_diffusion_generate`` at temperature 0, batch 1. Returns (tokens after the prompt on the
    rounded-up canvas, NFE of the released loop, its denoising forwards run before a stop token with no mask
    before it was committed, the first stop token's offset or None).

    ``rule``: ``static`` (top-quota confidence), ``dynamic`` (all ``p > tau``, or the top quota when fewer),
    ``sequential`` (the quota's leftmost masks)."""
    mask, L, p = model.mask_id, block_length, len(prompt)
    blocks = -(-(p + gen_length) // L)
    x = list(prompt) + [mask] * (blocks * L - p)
    nfe = denoise = 0

    def stopped() -> bool:  # a stop token committed with no mask before it (where dlm's early stop ends the row)
        gen = x[p:]
        first = next((i for i, t in enumerate(gen) if stop and t in stop), None)
        return first is not None and mask not in gen[:first]

    if p // L > 0:
        nfe += 1  # prefill of the prompt's whole blocks (store only)
    quotas = transfer_tokens(L, steps)
    for b in range(p // L, blocks):
        s, e = b * L, (b + 1) * L
        for step in range(steps + 1):
            masked = [j for j in range(s, e) if x[j] == mask]
            nfe += 1
            if not masked:
                break  # this forward stored the block's K/V
            if step == steps:
                raise AssertionError("unreachable: the quotas of a block's steps add up to the block length")
            denoise += not stopped()
            logits = model.logits(x[:e], L)
            probs = torch.softmax(logits, -1)
            props, conf = {}, {}
            for j in masked:
                scores = logits[j].clone()
                scores[mask] = -math.inf  # never MASK (the released argmax may pick it)
                props[j] = int(scores.argmax())
                conf[j] = float(probs[j, props[j]])
            n = min(quotas[step], len(masked))  # the released topk may also pick unmasked positions
            ranked = sorted(masked, key=lambda j: -conf[j])
            if rule == "sequential":
                chosen = masked[:n]
            elif rule == "static":
                chosen = ranked[:n]
            elif rule == "dynamic":
                high = [j for j in masked if conf[j] > tau]
                chosen = high if len(high) >= n else ranked[:n]
            else:
                raise ValueError(rule)
            for j in chosen:
                x[j] = props[j]
        if stop is not None and any(t in stop for t in x[p:]):
            break
    gen = x[p:]
    first = next((i for i, t in enumerate(gen) if stop and t in stop), None)
    return gen, nfe, denoise, first
