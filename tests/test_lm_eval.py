"""The ``dlm`` lm-eval model on the demo model, through the real lm-eval (no mock), offline."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # before lm-eval and datasets are imported
pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402

from dlm import cli  # noqa: E402
from dlm.errors import ConfigError  # noqa: E402
from dlm.tools.lm_eval.generation import GenSettings, gen_settings, variant_config  # noqa: E402
from dlm.tools.lm_eval.model import DlmLM  # noqa: E402
from dlm.tools.lm_eval.options import parse_model_args  # noqa: E402
from dlm.tools.tasks import TASKS  # noqa: E402

LIMIT = 12
TASK_ARGS = [
    "--tasks", "dlm_add,dlm_pair,dlm_add_choice", "--limit", str(LIMIT), "--batch_size", "5",
    "--model_args", "mc_num=8,mc_batch=8,threads=1", "--log_samples",
]


def read_run(out: Path) -> tuple[dict, dict[str, list[dict]]]:
    """The results JSON and the logged samples (per task, by doc id) that lm-eval wrote under ``out``."""
    results = json.loads(next(out.rglob("results_*.json")).read_text())
    samples = {}
    for path in out.rglob("samples_*.jsonl"):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        task = path.name.removeprefix("samples_").rsplit("_", 1)[0]
        samples[task] = sorted(rows, key=lambda r: r["doc_id"])
    return results, samples


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("lm-eval-single")
    assert cli.main(["lm-eval", *TASK_ARGS, "--output_path", str(out)]) == 0
    return read_run(out)


@pytest.fixture(scope="module")
def demo_lm():
    return DlmLM(threads=1, mc_num=8, mc_batch=8, batch_size=4)


def generate(lm, prompts, **gen_kwargs):
    gen_kwargs = {"until": ["\n"], **gen_kwargs}
    reqs = [Instance("generate_until", {}, (p, dict(gen_kwargs)), i) for i, p in enumerate(prompts)]
    return lm.generate_until(reqs, disable_tqdm=True), reqs


# --- the command line against dlm eval -----------------------------------------------------------------

def test_addition_accuracy_through_lm_eval_equals_dlm_eval(single_process, tmp_path):
    results, samples = single_process
    config = Path(cli.__file__).parent / "configs" / "default.yaml"
    assert cli.main(["eval", str(config), "--tasks", "add,pair", "-n", str(LIMIT), "--out", str(tmp_path), "--quiet"]) == 0
    ours = {r["task"]: r for r in json.loads((tmp_path / "results.json").read_text())["results"]}
    for task in ("add", "pair"):
        assert [s["doc"]["prompt"] for s in samples[f"dlm_{task}"]] == [
            ex.prompt for ex in TASKS[task].examples(LIMIT, seed=0, split="eval")
        ]
        assert results["results"][f"dlm_{task}"]["acc,none"] * 100 == pytest.approx(ours[task]["accuracy"])


def test_logged_samples_carry_each_requests_nfe_and_seconds(single_process):
    _, samples = single_process
    stats = samples["dlm_add"][0]["arguments"]["gen_args_0"]["arg_2"]["dlm"]
    assert stats["nfe"] == [8] and stats["seconds"][0] > 0 and stats["rank"] == 0
    choice = samples["dlm_add_choice"][0]["arguments"]["gen_args_0"]["arg_2"]["dlm"]
    assert choice["nfe"][0] >= 1  # one Monte-Carlo forward plus the greedy check's


def test_multiple_choice_scores_through_the_loglikelihood_path(single_process):
    results, samples = single_process
    assert results["results"]["dlm_add_choice"]["acc,none"] > 0.5  # chance is 0.25
    lls = [float(r[0][0]) for r in samples["dlm_add_choice"][0]["resps"]]
    assert all(math.isfinite(x) and x <= 0 for x in lls)


def test_two_processes_under_torchrun_merge_to_the_single_process_result(single_process, tmp_path):
    out = tmp_path / "dp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "dlm", "lm-eval", *TASK_ARGS, "--output_path", str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    merged, merged_samples = read_run(out)
    single, single_samples = single_process
    for task in ("dlm_add", "dlm_pair", "dlm_add_choice"):
        assert merged["results"][task]["acc,none"] == single["results"][task]["acc,none"]
        assert merged["results"][task]["acc_stderr,none"] == pytest.approx(single["results"][task]["acc_stderr,none"])
        assert [s["resps"] for s in merged_samples[task]] == [s["resps"] for s in single_samples[task]]
    ranks = {s["arguments"]["gen_args_0"]["arg_2"]["dlm"]["rank"] for s in merged_samples["dlm_pair"]}
    assert ranks == {0, 1}


# --- model_args ----------------------------------------------------------------------------------------

def test_unknown_model_arg_is_one_clear_line(capsys):
    assert cli.main(["lm-eval", "--tasks", "dlm_add", "--limit", "1", "--model_args", "colour=red"]) == 2  # a DlmError: exit code 2, as argparse
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("dlm lm-eval: error:")]
    assert len(lines) == 1 and "unknown key 'colour'" in lines[0] and "Traceback" not in err


def test_bad_model_arg_value_names_the_field():
    with pytest.raises(ConfigError, match=r"decoding\.threshold.*1\.5"):
        parse_model_args({"decoding.name": "threshold", "decoding.threshold": 1.5})


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="config=.*nothing.yaml: no such file"):
        parse_model_args({"config": str(tmp_path / "nothing.yaml")})


def test_mc_num_must_be_whole_batches():
    with pytest.raises(ConfigError, match="multiple of mc_batch"):
        parse_model_args({"mc_num": 10, "mc_batch": 4})


def test_lm_evals_default_device_does_not_override_the_config():
    assert parse_model_args({"device": "cuda:0", "batch_size": 1}).pipeline.run.device == "cpu"
    assert parse_model_args({"device": "cuda:1"}).pipeline.run.device == "cuda:1"


# --- generate_until ------------------------------------------------------------------------------------

def test_answers_are_cut_at_the_first_stop_string(demo_lm):
    texts, _ = generate(demo_lm, ["123+456="], until=["8", "7"])
    assert texts == ["5"]  # the model answers 579


def test_mixed_prompt_lengths_batched_give_what_they_give_alone(demo_lm):
    prompts = ["1+2=", "rev:abcdefg=", "sort:3141=", "pair:57=", "999+999="]
    batched, _ = generate(demo_lm, prompts)
    alone = [generate(demo_lm, [p])[0][0] for p in prompts]
    assert batched == alone and batched[0] == "3" and batched[1] == "gfedcba"


def test_max_gen_toks_rounds_up_to_whole_blocks(demo_lm):
    _, reqs = generate(demo_lm, ["12+34="], max_gen_toks=3)  # block_length 8: generates 8 tokens
    assert reqs[0].arguments[2]["dlm"]["nfe"] == [8]
    iteration = next(p for s, p in demo_lm._variants.items() if s.max_gen_toks == 3).config.iteration.config
    assert (iteration.gen_length, iteration.block_length, iteration.steps) == (8, 8, 8)


def test_longer_generations_keep_the_steps_per_block(demo_lm):
    cfg = variant_config(demo_lm.config, GenSettings(max_gen_toks=20, temperature=0.0), demo_lm.pipe.model.capabilities)
    assert (cfg.iteration.config.gen_length, cfg.iteration.config.steps) == (24, 24)


def test_greedy_unless_the_task_samples():
    assert gen_settings({"until": "\n", "do_sample": False, "temperature": 0.7}) == (GenSettings(None, 0.0), ("\n",))
    assert gen_settings({"do_sample": True, "temperature": 0.7})[0].temperature == 0.7


def test_a_sampling_task_sets_the_decoding_temperature(demo_lm):
    cfg = variant_config(demo_lm.config, GenSettings(max_gen_toks=None, temperature=0.7), demo_lm.pipe.model.capabilities)
    assert cfg.decoding.config.temperature == 0.7 and cfg.iteration.config.gen_length == 8


def test_chat_history_rendered_by_lm_eval_is_not_wrapped_again(tiny_ckpt):
    lm = DlmLM(**{"model.path": str(tiny_ckpt), "model.chat_template": True, "threads": 1})
    rendered = lm.apply_chat_template([{"role": "user", "content": "1+1="}])
    assert rendered.startswith("<|startoftext|>") and rendered.endswith("assistant<|end_header_id|>")
    assert lm._encode(rendered) == lm.pipe.model.encode(rendered, chat=False)


def test_config_chat_template_applies_without_lm_evals(tiny_ckpt):
    lm = DlmLM(**{"model.path": str(tiny_ckpt), "model.chat_template": True, "threads": 1})
    assert lm._encode("1+1=") == lm.pipe.model.encode("1+1=", chat=True)


# --- loglikelihood -------------------------------------------------------------------------------------

def test_rolling_loglikelihood_is_the_estimate_on_the_whole_string(demo_lm):
    rolling = demo_lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, ("12+3=15",), 0)], True)
    plain = demo_lm.loglikelihood([Instance("loglikelihood", {}, ("", "12+3=15"), 0)], True)
    assert rolling == [plain[0][0]] and rolling[0] < 0


def test_rolling_loglikelihood_of_a_string_longer_than_the_context_is_refused(demo_lm):
    with pytest.raises(Exception, match="does not fit the model's context of 64"):
        demo_lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, ("1" * 80,), 0)], True)


def test_loglikelihood_is_reproducible_and_independent_of_the_other_requests(demo_lm):
    a = Instance("loglikelihood", {}, ("4+1=", "5"), 0)
    b = Instance("loglikelihood", {}, ("7+7=", "14"), 1)
    together = demo_lm.loglikelihood([a, b], True)
    assert demo_lm.loglikelihood([Instance("loglikelihood", {}, ("7+7=", "14"), 0)], True) == [together[1]]
    assert together[0][1] is True  # the demo model answers 5
