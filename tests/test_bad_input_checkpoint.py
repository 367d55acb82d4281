"""Bad checkpoints: corrupt weight files, malformed config.json values, ids outside the vocabulary, unusable
weights and wrong paths are each one ``CheckpointError`` line naming the file and the key, raised at load
(never a traceback, never a failure in the first forward, never a model that silently computes nonsense)."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from badinput import assert_refused, one_line, run_cli
from safetensors.torch import load_file, save_file

from dlm import CheckpointError, Pipeline
from dlm.testing import make_llada_checkpoint
from dlm.tools.qwen2_checkpoints import make_qwen2_checkpoint

ITERATION = {"name": "blockwise", "gen_length": 4, "block_length": 4, "steps": 4}


def build(path, name="llada", **model):
    return Pipeline.from_config({"model": {"name": name, "path": str(path), **model}, "iteration": ITERATION,
                                 "decoding": {"name": "low_confidence"}})


@pytest.fixture
def ckpt(tmp_path, tiny_ckpt):
    """A private copy of the tiny checkpoint, to be damaged by the test."""
    return shutil.copytree(tiny_ckpt, tmp_path / "ckpt")


def edit_config(directory, **changes):
    cfg = json.loads((directory / "config.json").read_text())
    cfg.update(changes)
    (directory / "config.json").write_text(json.dumps(cfg))


def refused(path, *needles, name="llada", **model) -> str:
    with pytest.raises(CheckpointError) as info:
        build(path, name, **model)
    return one_line(info.value, *needles)


# --- weight files -------------------------------------------------------------------------------------


def test_cli_refuses_a_truncated_weight_file(ckpt):
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    proc = run_cli("generate", "--set", f"model.path={ckpt}", "hi")
    assert_refused(proc, "generate", str(weights), "not a readable safetensors file")


@pytest.mark.parametrize("damage", ["empty", "random bytes", "truncated"])
def test_corrupt_weight_files_are_named(ckpt, damage):
    weights = ckpt / "model.safetensors"
    data = {"empty": b"", "random bytes": os.urandom(4096), "truncated": weights.read_bytes()[:-100]}[damage]
    weights.write_bytes(data)
    refused(ckpt, "model.safetensors")


def test_weights_stored_as_integers_are_refused(ckpt):
    weights = ckpt / "model.safetensors"
    save_file({k: v.to(torch.int32) for k, v in load_file(weights).items()}, weights)
    refused(ckpt, "stored as I32", "floating point")


def test_weights_that_are_all_nan_are_refused(ckpt):
    weights = ckpt / "model.safetensors"
    save_file({k: torch.full_like(v, float("nan")) for k, v in load_file(weights).items()}, weights)
    refused(ckpt, "NaN or infinite", "corrupt")


def test_weights_that_overflow_float16_suggest_float32(tmp_path):
    path = make_llada_checkpoint(tmp_path / "big", seed=1)
    weights = path / "model.safetensors"
    tensors = load_file(weights)
    tensors["model.transformer.ln_f.weight"] = tensors["model.transformer.ln_f.weight"] * 1e6
    save_file(tensors, weights)
    with pytest.raises(CheckpointError) as info:
        Pipeline.from_config({"model": {"name": "llada", "path": str(path)}, "iteration": ITERATION,
                              "decoding": {"name": "low_confidence"}, "dtype": "float16"})
    one_line(info.value, "ln_f.weight", "dtype: float32")


# --- config.json ----------------------------------------------------------------------------------------


def test_config_json_that_is_not_an_object_is_refused(ckpt):
    (ckpt / "config.json").write_text("[1, 2]")
    refused(ckpt, "config.json", "JSON object")


@pytest.mark.parametrize(
    "key,value",
    [("d_model", "abc"), ("d_model", 32.5), ("d_model", True), ("n_layers", -1), ("vocab_size", 0),
     ("mask_token_id", "x"), ("mask_token_id", 1.5), ("eos_token_id", ["a"]), ("max_sequence_length", "big"),
     ("rope_theta", "x"), ("weight_tying", "yes")],
)
def test_config_json_values_of_the_wrong_type_name_the_key(ckpt, key, value):
    edit_config(ckpt, **{key: value})
    refused(ckpt, "config.json", key)


def test_heads_that_do_not_divide_the_width_are_named(ckpt):
    edit_config(ckpt, n_heads=5, n_kv_heads=5)
    refused(ckpt, "d_model 32 is not a multiple of n_heads 5")


def test_mask_id_outside_the_vocabulary_fails_at_load(ckpt):
    edit_config(ckpt, mask_token_id=10**6)
    refused(ckpt, "mask token id 1000000 is outside the vocabulary")


def test_end_token_outside_the_vocabulary_is_refused(ckpt):
    edit_config(ckpt, eos_token_id=999)
    refused(ckpt, "end-token id 999 is outside the vocabulary")


def test_end_token_override_outside_the_vocabulary_is_refused(tiny_ckpt):
    refused(tiny_ckpt, "end-token id 999", eos_token_ids=[999])


def test_end_token_equal_to_mask_is_refused(tiny_ckpt):
    refused(tiny_ckpt, "is the MASK id", eos_token_ids=[2])


@pytest.mark.parametrize("name", ["dream", "fast_dllm_v2"])
def test_qwen2_layout_config_values_are_checked_too(tmp_path, name):
    path = make_qwen2_checkpoint(tmp_path / name, seed=1)
    edit_config(path, hidden_size="wide")
    refused(path, "hidden_size must be an integer", name=name)


@pytest.mark.parametrize("name", ["dream", "fast_dllm_v2"])
def test_qwen2_layout_mask_id_outside_the_vocabulary_is_refused(tmp_path, name):
    path = make_qwen2_checkpoint(tmp_path / name, seed=1)
    refused(path, "mask token id 5000", name=name, mask_token_id=5000)


def test_sharded_index_without_a_weight_map_object_is_refused(tmp_path):
    path = make_llada_checkpoint(tmp_path / "sharded", shards=2, seed=1)
    (path / "model.safetensors.index.json").write_text('{"weight_map": ["a"]}')
    refused(path, "index.json", "weight_map")


# --- paths ------------------------------------------------------------------------------------------


def test_a_file_given_as_model_path_is_named_as_a_file(tiny_ckpt):
    refused(tiny_ckpt / "config.json", "is a file", "directory that holds config.json")


def test_a_missing_model_path_is_named(tmp_path):
    refused(tmp_path / "nope", "does not exist")
