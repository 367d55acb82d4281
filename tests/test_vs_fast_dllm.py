"""The side-by-side benchmark against the original Fast-dLLM code: what it needs from the user, and its checkpoint.

The comparison itself needs a Fast-dLLM checkout, which is never downloaded (docs/benchmarks.md records its
runs); these tests cover what runs without one.
"""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from dlm.tools import vs_fast_dllm


def test_a_folder_without_the_reference_is_named_with_what_is_expected(tmp_path):
    (tmp_path / "llada").mkdir()
    with pytest.raises(SystemExit, match="no llada/generate.py and llada/model/modeling_llada.py"):
        vs_fast_dllm.main(["--fast-dllm", str(tmp_path)])


def test_a_checkout_root_or_its_llada_folder_is_found(tmp_path):
    model = tmp_path / "llada" / "model"
    model.mkdir(parents=True)
    (tmp_path / "llada" / "generate.py").write_text("")
    (model / "modeling_llada.py").write_text("")
    assert vs_fast_dllm.find_llada_dir(tmp_path) == tmp_path / "llada"
    assert vs_fast_dllm.find_llada_dir(tmp_path / "llada") == tmp_path / "llada"


def test_checkpoint_has_the_requested_shape_and_never_prefers_mask(tmp_path):
    args = vs_fast_dllm.parser().parse_args([
        "--fast-dllm", str(tmp_path), "--d-model", "32", "--layers", "2", "--heads", "4", "--vocab", "300",
        "--prompts", "8", "--gen", "8",
    ])
    ckpt = vs_fast_dllm.write_checkpoint(tmp_path / "ckpt", args)
    cfg = json.loads((ckpt / "config.json").read_text())
    assert (cfg["d_model"], cfg["n_layers"], cfg["n_heads"], cfg["mlp_hidden_size"]) == (32, 2, 4, 96)
    head = load_file(str(ckpt / "model.safetensors"))["model.transformer.ff_out.weight"]
    assert head.shape == (cfg["embedding_size"], 32) and cfg["embedding_size"] >= 300
    assert not head[cfg["mask_token_id"]].any() and head.abs().sum() > 0
