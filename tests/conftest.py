"""Shared fixtures: tiny random checkpoints in the real LLaDA layout, written once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

from dlm.testing import make_llada_checkpoint

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# tiny models gain nothing from intra-op threads, and on a loaded machine extra threads cost far more than
# they give (spin-waits): the suite runs single-threaded, as pipelines built from a config with threads: 1
torch.set_num_threads(1)
settings.register_profile(
    "dlm", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dlm"))


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """2 layers, d=32, 4 heads (GQA 2 kv heads), char vocabulary, single safetensors file."""
    return make_llada_checkpoint(tmp_path_factory.mktemp("tiny") / "llada", n_kv_heads=2, seed=1)


@pytest.fixture(scope="session")
def sharded_ckpt(tmp_path_factory) -> Path:
    """Same shapes as tiny_ckpt, weights tied, split over 3 shards with an index file."""
    return make_llada_checkpoint(
        tmp_path_factory.mktemp("sharded") / "llada", shards=3, weight_tying=True, seed=2
    )


@pytest.fixture(scope="session")
def one_layer_ckpt(tmp_path_factory) -> Path:
    return make_llada_checkpoint(tmp_path_factory.mktemp("one") / "llada", n_layers=1, seed=3)


def pipeline_config(ckpt: Path, **sections) -> dict:
    """A float64 CPU pipeline config on ``ckpt`` with section overrides (dicts merged into defaults)."""
    cfg = {
        "model": {"name": "llada", "path": str(ckpt)},
        "iteration": {"name": "blockwise", "gen_length": 16, "block_length": 8, "steps": 16},
        "decoding": {"name": "low_confidence"},
        "cache": {"name": "none"},
        "dtype": "float64",
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            cfg[key] = {**cfg.get(key, {}), **value} if "name" not in value else value
        else:
            cfg[key] = value
    return cfg
