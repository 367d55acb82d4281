"""Resumable training: the state of a run (weights, AdamW moments, step, masking-noise generator, losses)
written to ``OUT/train-state/`` so the same command with ``--resume`` continues where it stopped.

Safetensors and JSON only (no pickle). The data stream is not stored: it is a pure function of the seed,
so a resumed run rebuilds it and skips the batches already used. A resumed run therefore takes the same
steps on the same batches with the same noise as an uninterrupted one (tests/test_train_resume.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

STATE_DIR = "train-state"


@dataclass
class RunState:
    step: int  # optimiser steps done
    losses: list[float]
    seconds: float  # training time spent so far


def save_state(directory: Path, recipe: dict, net: torch.nn.Module, opt: torch.optim.Optimizer,
               noise: torch.Generator, run: RunState) -> Path:
    """Write the run's state to ``directory/train-state`` (replacing an older one)."""
    out = Path(directory) / STATE_DIR
    out.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in net.state_dict().items()}
    for index, slots in opt.state_dict()["state"].items():
        for key, value in slots.items():
            tensors[f"optim.{index}.{key}"] = torch.as_tensor(value).contiguous()
    tensors["noise"] = noise.get_state()
    save_file(tensors, str(out / "state.safetensors.tmp"))
    (out / "state.safetensors.tmp").replace(out / "state.safetensors")
    meta = {"recipe": recipe, "step": run.step, "losses": run.losses, "seconds": run.seconds}
    (out / "state.json").write_text(json.dumps(meta) + "\n")
    return out


def has_state(directory: Path) -> bool:
    return (Path(directory) / STATE_DIR / "state.json").is_file()


def load_state(directory: Path, recipe: dict, net: torch.nn.Module, opt: torch.optim.Optimizer,
               noise: torch.Generator) -> RunState:
    """Restore ``net``, ``opt`` and ``noise`` in place from ``directory/train-state``; a state written by
    another recipe is refused (a ValueError naming the fields that differ)."""
    src = Path(directory) / STATE_DIR
    meta = json.loads((src / "state.json").read_text())
    differ = sorted(k for k in set(recipe) | set(meta["recipe"]) if recipe.get(k) != meta["recipe"].get(k))
    if differ:
        raise ValueError(f"{src} was written by another recipe (different {', '.join(differ)}); resume with the "
                         "same options, or train into a new --out")
    tensors = load_file(str(src / "state.safetensors"))
    net.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    saved = opt.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    opt.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
    noise.set_state(tensors["noise"])
    return RunState(meta["step"], [float(x) for x in meta["losses"]], float(meta["seconds"]))
