"""``dlm bench`` end to end on tiny checkpoints (no timing assertions: figures are only checked for shape)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from dlm.tools import random_model as rm
from dlm.cli import main
from dlm.errors import ConfigError
from dlm.pipeline import Pipeline

ITERATION = {"name": "blockwise", "gen_length": 8, "block_length": 4, "steps": 8}


def write_config(path: Path, ckpt: Path | None, cache: str, decoding: str = "low_confidence") -> Path:
    cfg = {
        "model": {"name": "llada", **({"path": str(ckpt)} if ckpt else {})},
        "iteration": ITERATION,
        "decoding": {"name": decoding},
        "cache": {"name": cache},
        "dtype": "float64",
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_bench_two_configs_end_to_end(tiny_ckpt, tmp_path, capsys):
    a = write_config(tmp_path / "none.yaml", tiny_ckpt, "none")
    b = write_config(tmp_path / "dual.yaml", tiny_ckpt, "dual", "threshold")
    js, md = tmp_path / "out" / "bench.json", tmp_path / "out" / "bench.md"
    rc = main([
        "bench", str(a), str(b), "--prompts", "2", "--prompt-length", "5", "--repeats", "2", "--warmup", "1",
        "--no-progress", "--json-out", str(js), "--md-out", str(md),
    ])
    assert rc == 0
    printed = capsys.readouterr().out
    table = md.read_text()
    assert table.strip() == printed.strip()
    header = table.splitlines()[0]
    for column in ("NFE", "tokens/forward", "tokens/s", "wall s (median)", "speed-up"):
        assert column in header
    assert len(table.strip().splitlines()) == 4  # header, rule, two configs

    report = json.loads(js.read_text())
    rows = report["results"]
    assert [r["label"] for r in rows] == ["none", "dual"]
    assert rows[0]["speedup"] == pytest.approx(1.0)
    assert all(len(r["wall_seconds_all"]) == 2 and r["speedup"] > 0 for r in rows)
    assert report["settings"]["prompts"] == 2 and report["machine"]["torch"]

    # NFE figures are what Pipeline.generate reports for the same prompts, one prompt per call
    pipe = Pipeline.from_yaml(a)
    caps = pipe.model.capabilities
    prompts = rm.random_prompts(2, 5, pipe.model.net.spec.vocab_in, avoid=(caps.mask_id, *caps.eos_ids), seed=0)
    for path, row in zip((a, b), rows):
        pipe = Pipeline.from_yaml(path)
        nfe = [pipe.generate(input_ids=[p]).nfe[0] for p in prompts]
        assert row["nfe_per_prompt"] == nfe
        assert row["nfe"] == pytest.approx(sum(nfe) / 2)
        assert row["generated_tokens"] == 2 * ITERATION["gen_length"]
        assert row["tokens_per_forward"] == pytest.approx(2 * ITERATION["gen_length"] / sum(nfe))


def test_bench_random_model_and_prompts_file(tmp_path, capsys):
    a = write_config(tmp_path / "none.yaml", None, "none")
    b = write_config(tmp_path / "prefix.yaml", None, "prefix")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("12+7=\n\nabc\n")
    js = tmp_path / "bench.json"
    spec = "d_model=32,n_layers=1,n_heads=4,vocab_size=96,max_sequence_length=64"
    argv = [
        "bench", str(a), str(b), "--random-model", spec, "--model-cache", str(tmp_path / "models"),
        "--prompts-file", str(prompts), "--repeats", "1", "--warmup", "0", "--no-progress", "--json-out", str(js),
        "--label", "baseline", "--label", "prefix",
    ]
    assert main(argv) == 0
    report = json.loads(js.read_text())
    assert report["settings"]["prompts"] == 2
    assert [r["label"] for r in report["results"]] == ["baseline", "prefix"]
    # 1-layer model: the prefix cache is exact, so both configs give the same tokens
    assert report["results"][1]["same_tokens_as_first"] == pytest.approx(1.0)
    made = list((tmp_path / "models").iterdir())
    assert len(made) == 1 and (made[0] / "config.json").is_file()
    assert main(argv) == 0  # the cached checkpoint is reused
    assert list((tmp_path / "models").iterdir()) == made
    assert "speed-up" in capsys.readouterr().out


def test_model_spec_parsing():
    spec = rm.parse_model_spec("d_model=64, n_layers=2,weight_tying=true")
    assert spec["d_model"] == 64 and spec["n_layers"] == 2 and spec["weight_tying"] is True
    assert rm.parse_model_spec(None) == rm.RANDOM_MODEL_DEFAULTS
    assert 20e6 <= rm.count_parameters(rm.RANDOM_MODEL_DEFAULTS) <= 50e6
    with pytest.raises(ConfigError, match="unknown field 'width'"):
        rm.parse_model_spec("width=3")
    with pytest.raises(ConfigError, match="not an integer"):
        rm.parse_model_spec("d_model=big")
    with pytest.raises(ConfigError, match="choose one of llada, qwen2, llada_moe, llada2, sdar, sdar_moe"):
        rm.parse_model_spec("family=gpt2")


def test_bench_writes_a_random_qwen2_layout_model_for_the_causal_decoders(tmp_path):
    root = Path(__file__).parent.parent / "examples"
    js = tmp_path / "bench.json"
    spec = "family=qwen2,d_model=32,n_layers=1,n_heads=4,vocab_size=96,max_sequence_length=64"
    argv = ["bench", str(root / "autoregressive.yaml"), str(root / "jacobi.yaml"), "--random-model", spec,
            "--model-cache", str(tmp_path / "models"), "--set", "iteration.gen_length=8", "--set", "dtype=float64",
            "--prompt-length", "4", "--repeats", "1", "--warmup", "0", "--no-progress", "--json-out", str(js)]
    assert main(argv) == 0
    report = json.loads(js.read_text())
    (made,) = list((tmp_path / "models").iterdir())
    assert made.name.startswith("qwen2-") and json.loads((made / "config.json").read_text())["vocab_size"] == 96
    assert report["settings"]["random_model"]["family"] == "qwen2"
    assert report["results"][1]["same_tokens_as_first"] == pytest.approx(1.0)  # greedy Jacobi is exact
    assert report["results"][1]["nfe"] <= report["results"][0]["nfe"]


def test_model_spec_of_the_moe_family():
    spec = rm.parse_model_spec("family=llada_moe,d_model=64,n_layers=2,n_heads=4,mlp_hidden_size=96,top_k=3")
    assert spec["n_experts"] == 8 and spec["top_k"] == 3
    assert rm.count_parameters(spec, active=True) < rm.count_parameters(spec)
    dense = rm.parse_model_spec("d_model=64,n_layers=2,n_heads=4,mlp_hidden_size=96,vocab_size=8192")
    moe_attention_extra = 2 * (64 * 8 + 2 * 16)  # router and QK norms per layer
    assert rm.count_parameters(spec, active=True) == rm.count_parameters(dense) + moe_attention_extra
    with pytest.raises(ConfigError, match="n_experts applies to family=llada_moe, llada2, sdar_moe only"):
        rm.parse_model_spec("n_experts=4")
    with pytest.raises(ConfigError, match="top_k .9. must be at most n_experts .8."):
        rm.parse_model_spec("family=llada_moe,top_k=9,mlp_hidden_size=18")
    with pytest.raises(ConfigError, match="must divide mlp_hidden_size"):
        rm.parse_model_spec("family=llada_moe,top_k=3,mlp_hidden_size=100")


def test_bench_writes_a_random_llada_moe_layout_model(tmp_path):
    root = Path(__file__).parent.parent / "examples"
    js = tmp_path / "bench.json"
    spec = "family=llada_moe,d_model=32,n_layers=1,n_heads=4,mlp_hidden_size=32,n_experts=4,vocab_size=96,max_sequence_length=64"
    argv = ["bench", str(root / "llada-moe.yaml"), "--random-model", spec, "--model-cache", str(tmp_path / "models"),
            "--set", "iteration.gen_length=8", "--set", "iteration.block_length=4", "--set", "iteration.steps=8",
            "--set", "dtype=float64", "--prompt-length", "4", "--repeats", "1", "--warmup", "0", "--no-progress",
            "--json-out", str(js)]
    assert main(argv) == 0
    report = json.loads(js.read_text())
    (made,) = list((tmp_path / "models").iterdir())
    cfg = json.loads((made / "config.json").read_text())
    assert made.name.startswith("llada_moe-") and cfg["num_experts"] == 4 and cfg["expert_intermediate_size"] == 16
    assert report["settings"]["random_model_active_parameters"] < report["settings"]["random_model_parameters"]
    assert report["results"][0]["nfe"] == 8


def test_bench_writes_a_random_sdar_layout_model_for_sdars_rules(tmp_path):
    root = Path(__file__).parent.parent / "examples"
    js = tmp_path / "bench.json"
    spec = "family=sdar,d_model=32,n_layers=1,n_heads=4,vocab_size=96,max_sequence_length=64"
    static_as_threshold = tmp_path / "sdar-threshold-1.yaml"
    static_as_threshold.write_text((root / "sdar.yaml").read_text().replace("threshold: 0.9", "threshold: 1.0"))
    argv = ["bench", str(root / "sdar-static.yaml"), str(static_as_threshold), "--random-model", spec,
            "--model-cache", str(tmp_path / "models"), "--set", "iteration.gen_length=8", "--set", "dtype=float64",
            "--prompt-length", "5", "--repeats", "1", "--warmup", "0", "--no-progress", "--json-out", str(js)]
    assert main(argv) == 0
    report = json.loads(js.read_text())
    (made,) = list((tmp_path / "models").iterdir())
    cfg = json.loads((made / "config.json").read_text())
    assert made.name.startswith("sdar-") and (cfg["model_type"], cfg["block_size"], cfg["vocab_size"]) == ("sdar", 4, 96)
    assert report["settings"]["random_model"]["family"] == "sdar"
    # threshold 1.0 with the quota floor is the static rule: the same tokens and NFE as low_confidence
    assert report["results"][1]["same_tokens_as_first"] == pytest.approx(1.0)
    assert report["results"][1]["nfe"] == report["results"][0]["nfe"]


def test_bench_writes_a_random_sdar_moe_layout_model_for_the_sdar_moe_example(tmp_path):
    from safetensors.torch import load_file

    root = Path(__file__).parent.parent / "examples"
    js = tmp_path / "bench.json"
    spec = "family=sdar_moe,d_model=32,n_layers=1,n_heads=4,mlp_hidden_size=32,n_experts=4,vocab_size=96,max_sequence_length=64"
    argv = ["bench", str(root / "sdar-moe.yaml"), "--random-model", spec, "--model-cache", str(tmp_path / "models"),
            "--set", "iteration.gen_length=8", "--set", "dtype=float64", "--prompt-length", "4", "--repeats", "1",
            "--warmup", "0", "--no-progress", "--json-out", str(js)]
    assert main(argv) == 0
    report = json.loads(js.read_text())
    (made,) = list((tmp_path / "models").iterdir())
    cfg = json.loads((made / "config.json").read_text())
    assert made.name.startswith("sdar_moe-")
    assert (cfg["model_type"], cfg["num_experts"], cfg["moe_intermediate_size"], cfg["norm_topk_prob"],
            cfg["vocab_size"]) == ("sdar_moe", 4, 16, True, 96)
    written = sum(t.numel() for t in load_file(str(made / "model.safetensors")).values())
    assert report["settings"]["random_model_parameters"] == written
    assert report["settings"]["random_model_active_parameters"] < written
    assert report["results"][0]["nfe"] == 8  # one token per step, as the example's static rule


def test_bench_writes_a_random_llada2_layout_model_and_runs_both_llada2_examples(tmp_path):
    root = Path(__file__).parent.parent / "examples"
    js = tmp_path / "bench.json"
    spec = "family=llada2,d_model=32,n_layers=1,n_heads=4,mlp_hidden_size=32,n_experts=4,vocab_size=96,max_sequence_length=64"
    argv = ["bench", str(root / "llada2.yaml"), str(root / "llada2.1-editing.yaml"), "--random-model", spec,
            "--model-cache", str(tmp_path / "models"), "--set", "model.block_length=4", "--set", "iteration.gen_length=8",
            "--set", "iteration.sub_block_size=4", "--set", "dtype=float64",
            "--prompt-length", "4", "--repeats", "1", "--warmup", "0", "--no-progress", "--json-out", str(js)]
    assert main(argv) == 0
    report = json.loads(js.read_text())
    (made,) = list((tmp_path / "models").iterdir())
    cfg = json.loads((made / "config.json").read_text())
    assert made.name.startswith("llada2-") and cfg["model_type"] == "llada2_moe" and cfg["n_group"] == 2
    assert report["settings"]["random_model_active_parameters"] < report["settings"]["random_model_parameters"]
    assert all(r["nfe"] >= 2 for r in report["results"])


def test_examples_validate():
    from dlm.config import load_config

    root = Path(__file__).parent.parent / "examples"
    names = ("none", "prefix", "dual", "threshold", "prefix_threshold", "dual_threshold", "dual_factor",
             "dparallel-llada", "vicinity", "dkv")
    for path in (root / f"{n}.yaml" for n in names):
        cfg = load_config(path)
        assert cfg.iteration.config.gen_length == 256 and cfg.iteration.config.block_length == 32
    for name in ("autoregressive", "jacobi", "wedlm"):
        assert load_config(root / f"{name}.yaml", ["model.path=/models/qwen"]).cache.name == "append"
    for name in ("sdar", "sdar-static", "sdar-moe"):  # SDAR's published block length and steps
        cfg = load_config(root / f"{name}.yaml")
        assert (cfg.iteration.config.block_length, cfg.iteration.config.steps, cfg.cache.name) == (4, 4, "block")
    sdar_moe = load_config(root / "sdar-moe.yaml")  # the 30B-A3B with the static rule of the authors' benchmarks
    assert (sdar_moe.model.name, str(sdar_moe.model.config.path), sdar_moe.decoding.name) == (
        "sdar", "JetLM/SDAR-30B-A3B-Chat", "low_confidence")

    moe = load_config(root / "llada-moe.yaml")  # the model card's quick start
    assert moe.model.name == "llada_moe" and (moe.iteration.config.gen_length, moe.iteration.config.block_length,
                                              moe.iteration.config.steps) == (128, 32, 128)
    for name, editing in (("llada2", None), ("llada2.1-editing", 0.9)):  # the released generate's settings
        cfg = load_config(root / f"{name}.yaml")
        assert (cfg.model.config.block_length, cfg.iteration.config.sub_block_size) == (32, 32)
        assert (cfg.decoding.name, cfg.decoding.config.threshold, cfg.decoding.config.editing_threshold) == (
            "joint_threshold", 0.95, editing)


def test_moe_bench_times_moe_and_dense_side_by_side(tmp_path, capsys):
    from dlm.tools import moe_bench

    out = tmp_path / "moe.json"
    argv = ["--d-model", "32", "--layers", "1", "--experts", "4", "--top-k", "2", "--expert-dim", "16",
            "--tokens", "8", "--repeats", "1", "--warmup", "0", "--json-out", str(out)]
    assert moe_bench.main(argv) == 0
    table = capsys.readouterr().out
    assert "| tokens per forward | dense, same active parameters (ms) | sparse MoE (ms) | MoE / dense |" in table
    report = json.loads(out.read_text())
    (row,) = report["results"]
    assert row["max_abs_diff_moe_vs_all_experts"] < 1e-4  # the dense-over-experts comparison computes the same
    assert report["moe_active_parameters"] - report["dense_parameters"] == 4 * 32  # the router only
    assert all(row[f"{n}_cpu_ms"] > 0 for n in ("dense", "moe", "all_experts"))


def test_bench_writes_a_random_mdlm_layout_model_and_samples_unconditionally(tmp_path):
    from safetensors.torch import load_file

    root = Path(__file__).parent.parent / "examples"
    js = tmp_path / "bench.json"
    spec = "family=mdlm,d_model=32,n_layers=1,n_heads=4,vocab_size=300,max_sequence_length=16"
    argv = ["bench", str(root / "mdlm-owt.yaml"), str(root / "didi-instruct.yaml"), "--random-model", spec,
            "--model-cache", str(tmp_path / "models"), "--set", "iteration.gen_length=16", "--set", "dtype=float64",
            "--prompt-length", "0", "--prompts", "2", "--repeats", "1", "--warmup", "0", "--no-progress",
            "--json-out", str(js)]
    assert main(argv) == 0
    report = json.loads(js.read_text())
    (made,) = list((tmp_path / "models").iterdir())
    cfg = json.loads((made / "config.json").read_text())
    assert made.name.startswith("mdlm-") and (cfg["model_type"], cfg["vocab_size"], cfg["model_length"]) == (
        "mdlm", 300, 16)
    written = sum(t.numel() for k, t in load_file(str(made / "model.safetensors")).items() if "inv_freq" not in k)
    assert report["settings"]["random_model_parameters"] == written
    teacher, student = report["results"]
    assert student["nfe"] <= 16 + 1  # at most its 16 steps and the noise removal
    assert teacher["nfe"] <= 16  # 1000 steps, but a forward only when the canvas changed: at most one per token


def test_mdlm_examples_carry_the_authors_settings():
    from dlm.config import load_config

    root = Path(__file__).parent.parent / "examples"
    teacher, student = load_config(root / "mdlm-owt.yaml"), load_config(root / "didi-instruct.yaml")
    assert (teacher.iteration.config.steps, teacher.decoding.config.noise_removal) == (1000, "greedy")
    assert (student.iteration.config.steps, student.decoding.config.noise_removal) == (16, "ancestral")
    assert teacher.iteration.config.gen_length == student.iteration.config.gen_length == 1024
    assert teacher.cache.name == student.cache.name == "none"
