"""Bounded work for hostile input (issue #28, item 2) and the load-time checks of items 4, 5 and 7: a config
or checkpoint that would make dlm read, allocate or loop without a bound is refused at once, naming what is
wrong; a null ``model.path``, a foreign ``model_type``, a tokenizer beyond the vocabulary and weights whose
forward overflows are refused at load; a hub id resolves from the local Hugging Face cache.

Every subprocess runs under a time limit and an address-space limit (:func:`bounded_cli`), so a regression
that hangs or reads without end fails here instead of stalling CI.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time

import pytest
import torch
from badinput import assert_refused, one_line
from safetensors.torch import load_file, save_file

from dlm import CheckpointError, ConfigError, Pipeline
from dlm.config import load_config
from dlm.config_file import MAX_CONFIG_BYTES, MAX_DEPTH, parse_yaml
from dlm.tools.qwen2_checkpoints import make_qwen2_checkpoint

ITERATION = {"name": "blockwise", "gen_length": 4, "block_length": 4, "steps": 4}
MEMORY = 4 << 30  # address space of a CLI subprocess: torch alone maps ~1-2 GB


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))


def bounded_cli(*args: str, timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m dlm ARGS`` with a wall-clock and a memory bound, offline and single-threaded."""
    full = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "dlm", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=full, preexec_fn=_limit_memory, stdin=subprocess.DEVNULL)


def build(path, name="llada", **model):
    return Pipeline.from_config({"model": {"name": name, "path": str(path), **model}, "iteration": ITERATION,
                                 "decoding": {"name": "low_confidence"}})


@pytest.fixture
def ckpt(tmp_path, tiny_ckpt):
    return shutil.copytree(tiny_ckpt, tmp_path / "ckpt")


def edit_config(directory, **changes):
    cfg = json.loads((directory / "config.json").read_text())
    cfg.update(changes)
    (directory / "config.json").write_text(json.dumps(cfg))


def config_error(path, *needles) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return one_line(info.value, *needles)


# --- config files: non-regular, oversized, deep, alias bombs -------------------------------------------


def test_cli_refuses_a_device_as_config_at_once():
    t0 = time.monotonic()
    proc = bounded_cli("validate", "/dev/zero", timeout=30)
    assert_refused(proc, "validate", "/dev/zero", "character device")
    assert time.monotonic() - t0 < 30


def test_a_fifo_is_refused_without_opening_it(tmp_path):
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)  # opening it would block until a writer comes
    config_error(fifo, "pipe (FIFO)", "regular YAML file")


def test_a_gigabyte_config_is_refused_before_it_is_read(tmp_path):
    big = tmp_path / "big.yaml"
    with open(big, "wb") as f:
        f.truncate(3 << 30)  # sparse: 3 GB of size, no disk used
    config_error(big, "big.yaml", f"the limit is {MAX_CONFIG_BYTES}")


def test_cli_refuses_a_gigabyte_config_within_bounds(tmp_path):
    big = tmp_path / "big.yaml"
    with open(big, "wb") as f:
        f.truncate(3 << 30)
    assert_refused(bounded_cli("validate", big), "validate", "the limit is")


def test_deep_nesting_is_refused_while_parsing():
    with pytest.raises(ConfigError) as info:
        parse_yaml("a: " + "[" * 200_000, "deep.yaml")
    one_line(info.value, "deep.yaml", f"deeper than {MAX_DEPTH} levels")


def test_an_alias_bomb_is_refused_without_expanding_it(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]  # 10**9 scalars
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    t0 = time.monotonic()
    config_error(path, "bomb.yaml", "expands to more than")
    assert time.monotonic() - t0 < 5
    assert_refused(bounded_cli("validate", path), "validate", "expands to more than")


def test_a_recursive_alias_is_refused():
    with pytest.raises(ConfigError, match="through its aliases"):
        parse_yaml("&a [*a]", "loop.yaml")


def test_merge_keys_work_and_the_mapping_s_own_keys_win(tmp_path, tiny_ckpt):
    path = tmp_path / "merge.yaml"
    path.write_text(
        f"model: {{name: llada, path: {tiny_ckpt}}}\n"
        "x-defaults: &it {name: blockwise, gen_length: 8, block_length: 8, steps: 16}\n"
        "iteration: {<<: *it, steps: 8}\n"
        "decoding: {name: low_confidence}\n"
    )
    assert load_config(path).iteration.config.steps == 8
    merged = parse_yaml("a: &d {x: 1, y: 2}\nb: {<<: *d, y: 3}\n", "m.yaml")
    assert merged["b"] == {"x": 1, "y": 3}


def test_a_merge_key_on_a_scalar_says_what_a_merge_takes():
    with pytest.raises(ConfigError) as info:
        parse_yaml("iteration: {<<: 5, steps: 3}\n", "m.yaml")
    one_line(info.value, "m.yaml", "line 1", "mapping")


def test_a_symlink_loop_is_named_as_one(tmp_path):
    loop = tmp_path / "loop.yaml"
    loop.symlink_to(loop)
    config_error(loop, "loops back on itself")
    dangling = tmp_path / "dangling.yaml"
    dangling.symlink_to(tmp_path / "gone.yaml")
    config_error(dangling, "symbolic link to", "gone.yaml", "does not exist")


# --- model.path: null is not home ----------------------------------------------------------------------


@pytest.mark.parametrize("text", ["path: ~", "path: null"])
def test_a_null_model_path_is_refused_not_read_as_the_embedded_model(tmp_path, text):
    path = tmp_path / "tilde.yaml"
    path.write_text(f"model: {{name: llada, {text}}}\niteration: {{name: blockwise}}\ndecoding: low_confidence\n")
    config_error(path, "model.path", "is null", "quote the path")


def test_cli_refuses_a_null_model_path_override():
    proc = bounded_cli("validate", "--set", "model.path=~")
    assert_refused(proc, "validate", "--set model.path=~", "is null")


# --- config.json: numbers that size buffers and loops ---------------------------------------------------


@pytest.mark.parametrize("key,value,needle", [
    ("max_sequence_length", 2**40, "max_sequence_length must be an integer <="),
    ("n_layers", 10**12, "n_layers must be an integer <="),
    ("vocab_size", 2**60, "vocab_size must be an integer <="),
    ("d_model", float("inf"), "d_model must be an integer"),
])
def test_config_json_sizes_beyond_any_model_are_refused_before_building(ckpt, key, value, needle):
    edit_config(ckpt, **{key: value})
    with pytest.raises(CheckpointError) as info:
        build(ckpt)
    one_line(info.value, "config.json", needle)


def test_a_gigabyte_config_json_is_refused_before_it_is_read(ckpt):
    (ckpt / "config.json").unlink()
    with open(ckpt / "config.json", "wb") as f:
        f.truncate(2 << 30)
    with pytest.raises(CheckpointError) as info:
        build(ckpt)
    one_line(info.value, "config.json", "bytes")


def test_a_fifo_config_json_is_refused_without_opening_it(ckpt):
    (ckpt / "config.json").unlink()
    os.mkfifo(ckpt / "config.json")
    with pytest.raises(CheckpointError) as info:
        build(ckpt)
    one_line(info.value, "not a regular file")


def test_a_checkpoint_symlink_loop_is_named_as_one(tmp_path):
    loop = tmp_path / "ckpt"
    loop.symlink_to(loop)
    with pytest.raises(CheckpointError) as info:
        build(loop)
    one_line(info.value, "loops back on itself")


# --- model_type, tokenizer range, finite first forward ---------------------------------------------------


def test_a_model_type_of_another_family_is_refused_naming_the_right_adapter(ckpt):
    edit_config(ckpt, model_type="Dream")
    with pytest.raises(CheckpointError) as info:
        build(ckpt)
    one_line(info.value, "model_type 'Dream'", "dream checkpoint", "model.name: dream")


def test_a_llada_model_type_in_a_qwen2_layout_adapter_is_refused(tmp_path):
    ckpt = make_qwen2_checkpoint(tmp_path / "q", seed=0)
    edit_config(ckpt, model_type="llada")
    with pytest.raises(CheckpointError) as info:
        build(ckpt, "dream")
    one_line(info.value, "model_type 'llada'", "model.name: llada")


def test_an_unknown_model_type_is_accepted(ckpt):
    edit_config(ckpt, model_type="my_llada_variant")
    assert build(ckpt).generate(input_ids=[[5, 6]]).nfe == [4]


def test_a_tokenizer_with_ids_beyond_the_vocabulary_is_refused(ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    weights = load_file(ckpt / "model.safetensors")
    small = 8  # the char tokenizer has more ids than this
    weights = {k: (v[:small].contiguous() if v.shape[0] == cfg["vocab_size"] else v) for k, v in weights.items()}
    save_file(weights, ckpt / "model.safetensors")
    edit_config(ckpt, vocab_size=small, embedding_size=small, mask_token_id=small - 1, eos_token_id=small - 2)
    with pytest.raises(CheckpointError) as info:
        build(ckpt)
    one_line(info.value, "tokenizer has token ids up to", f"vocabulary of {small}")


def test_weights_whose_forward_overflows_are_refused_naming_the_layer(ckpt):
    weights = load_file(ckpt / "model.safetensors")
    name = next(k for k in weights if k.endswith("blocks.1.ff_proj.weight"))
    weights[name] = weights[name] * 1e30  # finite weights; their products overflow float32
    up = name.replace("ff_proj", "up_proj")
    weights[up] = weights[up] * 1e30
    save_file(weights, ckpt / "model.safetensors")
    with pytest.raises(CheckpointError) as info:
        Pipeline.from_config({"model": {"name": "llada", "path": str(ckpt)}, "iteration": ITERATION,
                              "decoding": {"name": "low_confidence"}, "dtype": "float32"})
    one_line(info.value, "NaN or infinite logits", "layer 1")


# --- hub ids from the local Hugging Face cache ------------------------------------------------------------


def hub_cache(root, ckpt, repo="toy-org/tiny-llada", rev="0123abcd"):
    """A Hugging Face cache in its standard layout holding ``ckpt`` as ``repo``."""
    folder = root / ("models--" + repo.replace("/", "--"))
    shutil.copytree(ckpt, folder / "snapshots" / rev)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(rev)
    return root


def test_a_hub_id_loads_from_the_cache_named_by_hf_hub_cache(tmp_path, tiny_ckpt, monkeypatch):
    cache = hub_cache(tmp_path / "hub", tiny_ckpt)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    pipe = build("toy-org/tiny-llada")
    assert pipe.generate(input_ids=[[5, 6]]).nfe == [4]


def test_cli_resolves_a_hub_id_from_hf_home_and_names_a_missing_one(tmp_path, tiny_ckpt):
    hub_cache(tmp_path / "home" / "hub", tiny_ckpt)
    env = {"HF_HOME": str(tmp_path / "home"), "HF_HUB_CACHE": ""}
    ok = bounded_cli("generate", "--json", "--set", "model.path=toy-org/tiny-llada", "--set", "iteration.gen_length=4",
                     "--set", "iteration.block_length=4", "--set", "iteration.steps=4", "ab", env=env)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["nfe"] == 4
    missing = bounded_cli("generate", "--set", "model.path=toy-org/absent", "ab", env=env)
    assert_refused(missing, "generate", "'toy-org/absent'", "nor in the Hugging Face cache", "huggingface-cli download",
                   "DLM_ALLOW_DOWNLOAD=1")


def test_a_huge_gen_length_is_refused_before_any_validator_iterates_up_to_it(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_text("model: {name: llada}\niteration: {name: blockwise, gen_length: %d, block_length: 3}\n"
                    "decoding: low_confidence\n" % 10**40)
    t0 = time.monotonic()
    config_error(path, "iteration.gen_length", "beyond dlm's bound")
    assert time.monotonic() - t0 < 5
