"""A slow, obviously-correct statement of MDLM's DiT forward and of MDLM's / DiDi-Instruct's ancestral sampler,
written from the released ``models/dit.py``, DiDi-Instruct's ``algo.py`` (``generate_samples``, ``predictor:
ancestral``) and ``trainer_base.py`` (``LogLinear``, ``_ancestral_update``, ``sample_categorical``), and MDLM's
``diffusion.py`` (``_sample`` with ``ddpm_cache``, greedy noise removal), as docs/fidelity.md describes.

Independent of dlm's model, iteration and decoding code: it reads the checkpoint tensors itself, runs one row
at a time from the global torch generator (``torch.manual_seed(seed)``, one ``rand`` of ``[1, L, V]`` per time
step, as the references' ``rand_like``), writes attention out per head, and recomputes the whole canvas at every
forward. The comparison with the released code itself is tests/reference_mdlm_code.py (run when the checkouts
are given) and docs/fidelity.md.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file


class NaiveDiT:
    """Float64 forward of an MDLM-family checkpoint (either layout)."""

    def __init__(self, ckpt: Path) -> None:
        cfg = json.loads((Path(ckpt) / "config.json").read_text())
        if "config" in cfg:
            m = cfg["config"]["model"]
            self.d, self.heads, self.layers = m["hidden_size"], m["n_heads"], m["n_blocks"]
            self.time_conditioning = cfg["config"]["algo"]["time_conditioning"]
        else:
            self.d, self.heads, self.layers = cfg["hidden_dim"], cfg["n_heads"], cfg["n_blocks"]
            self.time_conditioning = cfg["time_conditioning"]
        tensors = load_file(str(Path(ckpt) / "model.safetensors"))
        self.t = {k.removeprefix("backbone."): v.double() for k, v in tensors.items()}
        self.vocab = self.t["vocab_embed.embedding"].shape[0]
        self.mask_id = self.vocab - 1

    def _linear(self, x, name, bias=True):
        out = x @ self.t[name + ".weight"].T
        return out + self.t[name + ".bias"] if bias else out

    def _norm(self, x, name):  # LayerNorm: float32 statistics, no bias, then the weight
        return F.layer_norm(x.float(), [x.shape[-1]]).double() * self.t[name]

    def _time(self, sigma: float) -> torch.Tensor:  # TimestepEmbedder(sigma) then silu
        half = 128
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
        args = torch.tensor([sigma], dtype=torch.float32)[:, None] * freqs[None]
        feats = torch.cat([torch.cos(args), torch.sin(args)], dim=-1).double()
        h = F.silu(self._linear(feats, "sigma_map.mlp.0"))
        return F.silu(self._linear(h, "sigma_map.mlp.2"))[0]

    def _rope(self, x, n):  # x [n, hd]; tables from the float32 frequencies, in float64
        hd = x.shape[-1]
        inv = (1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))).double()
        ang = torch.arange(n).double()[:, None] * inv[None]
        cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()
        return x * cos + torch.cat([-x[:, hd // 2 :], x[:, : hd // 2]], -1) * sin

    def logits(self, ids: list[int], sigma: float = 0.0) -> torch.Tensor:
        """[n, V] logits of one row (positions 0..n-1) at noise level ``sigma`` (the DIT's own input)."""
        n, d, h = len(ids), self.d, self.heads
        hd = d // h
        x = self.t["vocab_embed.embedding"][torch.tensor(ids)]
        c = self._time(sigma)
        for i in range(self.layers):
            p = f"blocks.{i}."
            mod = self._linear(c, p + "adaLN_modulation").chunk(6)
            shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod
            a = self._norm(x, p + "norm1.weight") * (1 + scale_msa) + shift_msa
            qkv = self._linear(a, p + "attn_qkv", bias=False)
            q, k, v = qkv[:, :d], qkv[:, d : 2 * d], qkv[:, 2 * d :]
            heads = []
            for j in range(h):
                sl = slice(j * hd, (j + 1) * hd)
                qj, kj = self._rope(q[:, sl], n), self._rope(k[:, sl], n)
                heads.append(torch.softmax(qj @ kj.T / math.sqrt(hd), -1) @ v[:, sl])
            x = x + gate_msa * self._linear(torch.cat(heads, -1), p + "attn_out", bias=False)
            a = self._norm(x, p + "norm2.weight") * (1 + scale_mlp) + shift_mlp
            mlp = self._linear(F.gelu(self._linear(a, p + "mlp.0"), approximate="tanh"), p + "mlp.2")
            x = x + gate_mlp * mlp
        shift, scale = self._linear(c, "output_layer.adaLN_modulation").chunk(2)
        out = self._norm(x, "output_layer.norm_final.weight") * (1 + scale) + shift
        return self._linear(out, "output_layer.linear")


def reference_ancestral(naive: NaiveDiT, length: int, steps: int, seed: int, *, noise_eps: float = 1e-3,
                        eps: float = 1e-5, noise_removal: str = "ancestral", cache: bool = True,
                        time_conditioning: bool | None = None) -> tuple[list[int], int]:
    """One unconditional row of the references' sampler: the canvas all MASK; for ``i < steps``: ``t =
    linspace(1, eps, steps + 1)[i]``, ``α = 1 − (1 − noise_eps)·t`` (float32), ``q = p·(α_s − α_t)``, ``q[MASK] =
    1 − α_s``, a draw ``argmax(q / (1e-10 − log(rand + 1e-10)))`` at every position, masked positions take it;
    then the noise removal at ``t = eps`` (``ancestral``: ``α_s = 1``; ``greedy``: the argmax, no draw). ``p`` is the
    model's softmax with MASK excluded, at ``σ = −log α_t`` (0 unless time-conditioned). ``cache``: a forward only
    when the canvas changed since the last one (MDLM's ``ddpm_cache``; the draws are the same). Stops once nothing
    is masked. Returns the tokens and the forwards."""
    tc = naive.time_conditioning if time_conditioning is None else time_conditioning
    mask = naive.mask_id
    x = [mask] * length
    grid = torch.linspace(1, eps, steps + 1)
    dt = (1 - eps) / steps
    torch.manual_seed(seed)
    forwards, last, p = 0, None, None
    for i in range(steps + 1):
        if mask not in x:
            break
        t = grid[i]
        alpha_t = 1 - (1 - noise_eps) * t
        alpha_s = torch.tensor(1.0) if i == steps else 1 - (1 - noise_eps) * (t - dt)
        if p is None or not cache or x != last:
            sigma = float(-torch.log(alpha_t)) if tc else 0.0
            logits = naive.logits(x, sigma)
            logits[:, mask] = -torch.inf
            p = torch.softmax(logits, -1)
            forwards, last = forwards + 1, list(x)
        if i == steps and noise_removal == "greedy":
            drawn = p.argmax(-1)
        else:
            q = p * (alpha_s - alpha_t).double()
            q[:, mask] = (1 - alpha_s).double()
            u = torch.rand(1, length, naive.vocab, dtype=torch.float64)[0]
            drawn = (q / (1e-10 - (u + 1e-10).log())).argmax(-1)
        x = [int(d) if x_j == mask else x_j for x_j, d in zip(x, drawn)]
    return x, forwards
