"""A slow, obviously-correct float64 statement of the LLaDA-MoE forward, written from the architecture.

Independent of dlm's transformer, MoE dispatch, KV buffer and plans: it reads the checkpoint's config.json and
tensors itself and computes one token at a time where that is clearer, with every expert run on every token
and weighted by a dense vector of router weights (zero for the experts not chosen). The architecture, as the
LLaDA-MoE paper (Zhu et al., 2025, arXiv 2509.24389) and its released model code describe it:

    x = embed(ids)
    per layer:  h = rms(x);  q, k, v = h Wq (+b), h Wk (+b), h Wv (+b)
                q, k = rms_head(q), rms_head(k)            (qk_layernorm: RMSNorm over each head)
                q, k, v clamped to [-clip, clip]            (clip_qkv)
                q, k rotated by RoPE on their first partial_rotary_factor * head_dim dims (rotate_half)
                x = x + softmax(q k^T / sqrt(head_dim)) v Wo (+b)          (no causal mask, GQA)
                h = rms(x)
                dense layer (moe_layer_freq 0): x = x + swiglu(h)
                sparse layer: p = softmax_fp32(h Wgate) (+ expert_bias);  chosen = torch.topk(p, k)
                              w_e = p_e if e chosen else 0  (divided by the chosen sum if normalised)
                              x = x + sum_e w_e swiglu_e(h) + shared_swiglu(h)
    logits = rms(x) Whead        (Whead = embed when tied)

RMSNorm computes in float32 and RoPE tables are float32, as the released code does (so do dlm's layers); the
router's softmax is float32. ``torch.topk`` is the choice rule itself (the released code's), called per token.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file


class NaiveLLaDAMoE:
    """Float64 forward of a LLaDA-MoE checkpoint (no cache)."""

    def __init__(self, ckpt: Path, *, normalize: bool = False) -> None:
        cfg = json.loads((Path(ckpt) / "config.json").read_text())
        self.cfg, self.normalize = cfg, normalize
        self.t = {k: v.double() for k, v in load_file(str(Path(ckpt) / "model.safetensors")).items()}
        self.mask_id = cfg["mask_token_id"]
        self.h, self.kvh = cfg["num_attention_heads"], cfg["num_key_value_heads"]
        self.hd = cfg["hidden_size"] // self.h
        self.rot = int(self.hd * cfg.get("partial_rotary_factor", 1.0))

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

    def _linear(self, x, name, bias: bool):
        y = x @ self.t[name + ".weight"].T
        return y + self.t[name + ".bias"] if bias else y

    def _swiglu(self, x, prefix):
        return (F.silu(x @ self.t[prefix + "gate_proj.weight"].T) * (x @ self.t[prefix + "up_proj.weight"].T)) \
            @ self.t[prefix + "down_proj.weight"].T

    def routing_weights(self, h, layer: int) -> torch.Tensor:
        """Dense router weights [n, E] of layer ``layer`` (zero for the experts a token does not go to)."""
        p = f"model.layers.{layer}.mlp."
        probs = torch.softmax(h @ self.t[p + "gate.weight"].T, dim=-1, dtype=torch.float32)
        if p + "expert_bias" in self.t:
            probs = (probs + self.t[p + "expert_bias"]).float()
        dense = torch.zeros(h.shape[0], probs.shape[1], dtype=torch.float64)
        for i in range(h.shape[0]):
            kept, chosen = torch.topk(probs[i], self.cfg["num_experts_per_tok"])
            if self.normalize:
                kept = kept / kept.sum()
            for weight, e in zip(kept.double().tolist(), chosen.tolist()):
                dense[i, e] = weight
        return dense

    def forward(self, ids: torch.Tensor, start: int = 0, cache=None):
        """Logits [n, V] of tokens ``ids`` at positions start..start+n-1 (``reference_generate``'s model
        interface; no cache)."""
        if cache is not None:
            raise NotImplementedError("the naive LLaDA-MoE has no cache")
        c = self.cfg
        n = ids.numel()
        pos = torch.arange(start, start + n)
        bias, clip = c["attention_bias"], c.get("clip_qkv")
        x = self.t["model.embed_tokens.weight"][ids]
        for i in range(c["num_hidden_layers"]):
            p = f"model.layers.{i}."
            a = p + "self_attn."
            h = self._norm(x, self.t[p + "input_layernorm.weight"])
            q = self._linear(h, a + "q_proj", bias).view(n, self.h, self.hd)
            k = self._linear(h, a + "k_proj", bias).view(n, self.kvh, self.hd)
            v = self._linear(h, a + "v_proj", bias).view(n, self.kvh, self.hd)
            if c.get("qk_layernorm"):
                q, k = self._norm(q, self.t[a + "q_norm.weight"]), self._norm(k, self.t[a + "k_norm.weight"])
            if clip is not None:
                q, k, v = q.clamp(-clip, clip), k.clamp(-clip, clip), v.clamp(-clip, clip)
            q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)
            q, k = self._rope(q, pos), self._rope(k, pos)
            rep = self.h // self.kvh
            k, v = k.repeat_interleave(rep, 0), v.repeat_interleave(rep, 0)
            att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(self.hd), -1)
            x = x + self._linear((att @ v).transpose(0, 1).reshape(n, -1), a + "o_proj", bias)
            h = self._norm(x, self.t[p + "post_attention_layernorm.weight"])
            if c["moe_layer_freq"][i] == 0:
                x = x + self._swiglu(h, p + "mlp.")
                continue
            weights = self.routing_weights(h, i)  # [n, E]
            out = torch.zeros_like(x)
            for t in range(n):
                for e in range(c["num_experts"]):  # every expert on every token, weight 0 where not chosen
                    out[t] += weights[t, e] * self._swiglu(h[t], f"{p}mlp.experts.{e}.")
            if c.get("shared_expert_intermediate_size"):
                out = out + self._swiglu(h, p + "shared_expert.")
            x = x + out
        x = self._norm(x, self.t["model.norm.weight"])
        head = self.t.get("lm_head.weight", self.t["model.embed_tokens.weight"])
        return x @ head.T, None
