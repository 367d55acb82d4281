"""Run MDLM's and DiDi-Instruct's own code (their ``models/dit.py``, DiDi-Instruct's ``algo.py`` /
``trainer_base.py`` sampler, MDLM's ``diffusion.py`` ``_sample``) from local checkouts, on CPU, in float64.

Nothing of theirs is in this repository: the files are executed from the checkouts named by the environment
(``DLM_DIDI_REF``: a checkout of haoyangzheng-ai/didi-instruct; ``DLM_MDLM_REF``: of kuleshov-group/mdlm; the
commits are in docs/fidelity.md). Their imports that cannot run on a CPU machine, or that inference never
reaches, are replaced by the stand-ins below, each documented in docs/fidelity.md:

- ``flash_attn``: ``apply_rotary_emb_qkv_`` / ``apply_rotary_emb_torch`` as flash-attn's own torch reference
  (``x·cos + rotate_half(x)·sin``, the half-width tables repeated, not interleaved), and
  ``flash_attn_varlen_qkvpacked_func`` (equal-length rows, no dropout) as torch's SDPA;
- ``einops.rearrange``: the four patterns the files use, as reshapes;
- ``omegaconf.OmegaConf.create``: attribute access to a dict; ``lightning.LightningModule``: ``torch.nn.Module``;
  ``hydra``, ``torchmetrics``, ``timm``, the repositories' ``dataloader``, ``metrics`` and ``utils``: empty
  modules (training and evaluation code only);
- the time MLP's input cast to the weights' dtype (the features are float32 as published; on a GPU autocast
  makes that cast, on a CPU float64 run the linear layer would refuse the mixed dtypes).

The JIT flags ``dit.py`` sets when imported are restored afterwards.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

DIDI_ENV, MDLM_ENV = "DLM_DIDI_REF", "DLM_MDLM_REF"


def checkout(env: str) -> Path | None:
    path = os.environ.get(env)
    return Path(path) if path and (Path(path) / "models" / "dit.py").is_file() else None


# --- stand-ins --------------------------------------------------------------------------------------------


def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_emb_torch(x, cos, sin, interleaved=False):
    """flash_attn.layers.rotary.apply_rotary_emb_torch: x [b, s, h, d]; cos, sin [s, d/2]."""
    assert not interleaved
    cos = torch.cat((cos, cos), dim=-1)[:, None, :]
    sin = torch.cat((sin, sin), dim=-1)[:, None, :]
    return x * cos + _rotate_half(x) * sin


def apply_rotary_emb_qkv_(qkv, cos, sin, *args, **kwargs):
    """flash_attn's in-place rotary of q and k in qkv [b, s, 3, h, d]."""
    qkv[:, :, 0] = apply_rotary_emb_torch(qkv[:, :, 0], cos, sin)
    qkv[:, :, 1] = apply_rotary_emb_torch(qkv[:, :, 1], cos, sin)
    return qkv


def flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens, max_seqlen, dropout_p=0.0, causal=False, **kwargs):
    """Rows of equal length ``max_seqlen``: qkv [(b s), 3, h, d] -> [(b s), h, d] by SDPA."""
    assert dropout_p == 0.0
    b = len(cu_seqlens) - 1
    q, k, v = qkv.view(b, max_seqlen, *qkv.shape[1:]).unbind(dim=2)  # [b, s, h, d] each
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal)
    return out.transpose(1, 2).reshape(b * max_seqlen, *qkv.shape[2:])


def rearrange(x, pattern: str, **sizes):
    """The einops patterns of MDLM's and DiDi-Instruct's dit.py."""
    pattern = " ".join(pattern.split())
    if pattern == "b s (three h d) -> b s three h d":
        b, s, _ = x.shape
        return x.view(b, s, sizes["three"], sizes["h"], -1)
    if pattern == "b s ... -> (b s) ...":
        return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])
    if pattern == "(b s) h d -> b s (h d)":
        return x.reshape(sizes["b"], -1, x.shape[1] * x.shape[2])
    if pattern == "b s h d -> b s (h d)":
        return x.reshape(*x.shape[:2], -1)
    raise NotImplementedError(pattern)


def _namespace(value):
    if isinstance(value, dict):
        return SimpleNamespace(**{k: _namespace(v) for k, v in value.items()})
    return value


def _module(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    return mod


def _stubs() -> dict[str, types.ModuleType]:
    rotary = _module("flash_attn.layers.rotary", apply_rotary_emb_qkv_=apply_rotary_emb_qkv_,
                     apply_rotary_emb_torch=apply_rotary_emb_torch)
    interface = _module("flash_attn.flash_attn_interface",
                        flash_attn_varlen_qkvpacked_func=flash_attn_varlen_qkvpacked_func)
    layers = _module("flash_attn.layers", rotary=rotary)
    flash = _module("flash_attn", layers=layers, flash_attn_interface=interface)

    class _Callback:
        pass

    callbacks = _module("lightning.pytorch.callbacks", ProgressBar=_Callback)
    progress = _module("lightning.pytorch.callbacks.progress", TQDMProgressBar=_Callback)
    callbacks.progress = progress
    pytorch = _module("lightning.pytorch", callbacks=callbacks)
    lightning = _module("lightning", LightningModule=torch.nn.Module, pytorch=pytorch)
    hydra_utils = _module("hydra.utils")
    hydra = _module("hydra", utils=hydra_utils)

    class _Metric(torch.nn.Module):
        pass

    aggregation = _module("torchmetrics.aggregation", MeanMetric=_Metric)
    torchmetrics = _module("torchmetrics", aggregation=aggregation, MetricCollection=dict)
    omegaconf = _module("omegaconf", OmegaConf=SimpleNamespace(create=_namespace), DictConfig=SimpleNamespace)
    einops = _module("einops", rearrange=rearrange)
    return {
        "flash_attn": flash, "flash_attn.layers": layers, "flash_attn.layers.rotary": rotary,
        "flash_attn.flash_attn_interface": interface, "einops": einops, "omegaconf": omegaconf,
        "lightning": lightning, "lightning.pytorch": pytorch, "lightning.pytorch.callbacks": callbacks,
        "lightning.pytorch.callbacks.progress": progress, "hydra": hydra, "hydra.utils": hydra_utils,
        "torchmetrics": torchmetrics, "torchmetrics.aggregation": aggregation,
        "dataloader": _module("dataloader"), "metrics": _module("metrics"), "utils": _module("utils"),
    }


@contextmanager
def _modules(extra: dict[str, types.ModuleType]):
    """``extra`` in sys.modules while a reference file is executed; restored after (and the JIT flags)."""
    saved = {k: sys.modules.get(k) for k in extra}
    jit = (torch._C._jit_set_profiling_mode(True), torch._C._jit_set_profiling_executor(True),
           torch._C._jit_can_fuse_on_cpu(), torch._C._jit_can_fuse_on_gpu())
    torch._C._jit_set_profiling_mode(jit[0])
    torch._C._jit_set_profiling_executor(jit[1])
    sys.modules.update(extra)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
        torch._C._jit_set_profiling_mode(jit[0])
        torch._C._jit_set_profiling_executor(jit[1])
        torch._C._jit_override_can_fuse_on_cpu(jit[2])
        torch._C._jit_override_can_fuse_on_gpu(jit[3])


def _exec(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_LOADED: dict[tuple[str, str], SimpleNamespace] = {}


def load_didi(root: Path) -> SimpleNamespace:
    """DiDi-Instruct's ``models/dit.py``, ``trainer_base.py`` and ``algo.py``, executed from ``root``."""
    key = ("didi", str(root))
    if key not in _LOADED:
        stubs = _stubs()
        with _modules(stubs):
            dit = _exec("didi_ref_dit", root / "models" / "dit.py")
            models = _module("models", dit=dit, ema=_module("models.ema"))
            with _modules({"models": models, "models.dit": dit}):
                trainer_base = _exec("didi_ref_trainer_base", root / "trainer_base.py")
                with _modules({"trainer_base": trainer_base}):
                    algo = _exec("didi_ref_algo", root / "algo.py")
        _LOADED[key] = SimpleNamespace(dit=dit, trainer_base=trainer_base, algo=algo)
    return _LOADED[key]


def load_mdlm(root: Path) -> SimpleNamespace:
    """MDLM's ``models/dit.py``, ``noise_schedule.py`` and ``diffusion.py``, executed from ``root``."""
    key = ("mdlm", str(root))
    if key not in _LOADED:
        stubs = _stubs()
        with _modules(stubs):
            dit = _exec("mdlm_ref_dit", root / "models" / "dit.py")
            noise = _exec("mdlm_ref_noise_schedule", root / "noise_schedule.py")
            models = _module("models", dit=dit, ema=_module("models.ema"))
            with _modules({"models": models, "models.dit": dit, "noise_schedule": noise}):
                diffusion = _exec("mdlm_ref_diffusion", root / "diffusion.py")
        _LOADED[key] = SimpleNamespace(dit=dit, noise_schedule=noise, diffusion=diffusion)
    return _LOADED[key]


# --- the reference network and samplers -------------------------------------------------------------------


def dit_from_checkpoint(dit_module, ckpt: Path, *, causal_attention: bool = False) -> torch.nn.Module:
    """Their ``DIT(config, vocab_size)`` holding a dlm-written checkpoint (either layout), float64, eval mode."""
    import json

    cfg = json.loads((ckpt / "config.json").read_text())
    if "config" in cfg:
        m, vocab = cfg["config"]["model"], cfg["vocab_size"]
        model = dict(hidden_size=m["hidden_size"], cond_dim=m["cond_dim"], n_blocks=m["n_blocks"],
                     n_heads=m["n_heads"], length=m["length"])
    else:
        vocab = cfg["vocab_size"]
        model = dict(hidden_size=cfg["hidden_dim"], cond_dim=cfg["cond_dim"], n_blocks=cfg["n_blocks"],
                     n_heads=cfg["n_heads"], length=cfg["model_length"])
    config = _namespace({"model": {**model, "dropout": 0.0, "scale_by_sigma": True},
                         "algo": {"causal_attention": causal_attention}})
    net = dit_module.DIT(config, vocab_size=vocab)
    tensors = {k.removeprefix("backbone."): v for k, v in load_file(str(ckpt / "model.safetensors")).items()}
    net.load_state_dict(tensors, strict=True)
    net = net.double().eval()
    mlp = net.sigma_map.mlp
    mlp.register_forward_pre_hook(lambda m, args: (args[0].to(m[0].weight.dtype),))  # the documented cast
    return net


class Counted(torch.nn.Module):
    """The reference network, counting its forwards (NFE): all of them, those on a canvas that still holds MASK
    (``masked``), and of these those on a canvas other than the previous forward's (``changed``)."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net, self.calls, self.masked, self.changed, self.last = net, 0, 0, 0, None
        self.mask_id = net.vocab_embed.embedding.shape[0] - 1

    def forward(self, x, *args, **kwargs):
        self.calls += 1
        if bool((x == self.mask_id).any()):
            self.masked += 1
            self.changed += self.last is None or not torch.equal(x, self.last)
        self.last = x.clone()
        return self.net(x, *args, **kwargs)


def didi_sample(ref: SimpleNamespace, net: torch.nn.Module, *, length: int, steps: int, seed: int,
                time_conditioning: bool, noise_removal: str = "ancestral") -> tuple[torch.Tensor, Counted]:
    """DiDi-Instruct's ``generate_samples`` with ``sampling.predictor=ancestral`` (one row): tokens [L] and the
    counted forwards."""
    model = object.__new__(ref.algo.DiDiInstruct)
    torch.nn.Module.__init__(model)
    counted = Counted(net)
    model.backbone = counted
    model.student_ema = counted
    model.discriminator = torch.nn.Module()
    model.config = _namespace({"mode": "sample_eval_quiet", "sampling": {"steps": steps, "noise_removal": noise_removal,
                                                                             "use_float64": True}})
    model.sampler = "ancestral"
    model.noise = ref.trainer_base.LogLinear()
    vocab = net.vocab_embed.embedding.shape[0]
    model.mask_index, model.vocab_size, model.neg_infinity = vocab - 1, vocab, -1000000.0
    model.time_conditioning, model.num_tokens = time_conditioning, length
    model.rerank_steps_ratio = 0.5
    model.device = torch.device("cpu")
    torch.manual_seed(seed)
    x = model.generate_samples(num_samples=1, num_steps=steps)
    return x[0], counted


def mdlm_sample(ref: SimpleNamespace, net: torch.nn.Module, *, length: int, steps: int, seed: int,
                predictor: str = "ddpm_cache", time_conditioning: bool = False) -> tuple[torch.Tensor, Counted]:
    """MDLM's ``Diffusion._sample`` (``sampling.predictor`` ddpm_cache or ddpm, ``noise_removal: true``, the
    log-linear schedule; one row): tokens [L] and the counted forwards."""
    model = object.__new__(ref.diffusion.Diffusion)
    torch.nn.Module.__init__(model)
    counted = Counted(net)
    model.backbone = counted
    vocab = net.vocab_embed.embedding.shape[0]
    model.config = _namespace({"loader": {"eval_batch_size": 1}, "model": {"length": length},
                               "sampling": {"steps": steps, "noise_removal": True}, "noise": {"type": "loglinear"}})
    model.parameterization, model.sampler = "subs", predictor
    model.noise = ref.noise_schedule.LogLinearNoise()
    model.mask_index, model.vocab_size, model.neg_infinity = vocab - 1, vocab, -1000000.0
    model.time_conditioning = time_conditioning
    model.device = torch.device("cpu")
    torch.manual_seed(seed)
    x = model._sample(num_steps=steps)
    return x[0], counted
