"""Per-request pipelines of the server: generation lengths rounded up to blocks, schedules kept per block."""

from __future__ import annotations

from dlm import Pipeline
from dlm.config import default_config_path
from dlm.tools.serve.variants import Variants, _length_fields


def test_blockwise_lengths_keep_the_steps_per_block():
    it = {"gen_length": 256, "block_length": 32, "steps": 128}  # 16 steps per block
    assert _length_fields(it, 64) == {"gen_length": 64, "steps": 32}


def test_a_global_schedule_keeps_its_steps_per_token():
    it = {"gen_length": 256, "steps": 128, "eps": 1e-3}  # Dream: 2 tokens per step
    assert _length_fields(it, 100) == {"gen_length": 100, "steps": 50}


def test_max_tokens_round_up_to_the_block_and_share_a_key_with_the_same_length():
    variants = Variants(Pipeline.from_yaml(default_config_path()))
    assert variants.limits.gen_length(9) == 16
    assert variants.key(9, None) == variants.key(16, 0.0) == (16, None)  # 0.0 is the config's temperature
    assert variants.key(8, 1.0) == (8, 1.0)


def test_a_variant_shares_the_loaded_model_and_gives_the_config_answer():
    base = Pipeline.from_yaml(default_config_path())
    variants = Variants(base)
    longer = variants.pipeline(variants.key(16, None))
    assert longer.model is base.model
    expected = Pipeline.from_yaml(default_config_path(), overrides=["iteration.gen_length=16", "iteration.steps=16"])
    assert longer.generate(["rev:abc="]).sequences[0].tolist() == expected.generate(["rev:abc="]).sequences[0].tolist()
