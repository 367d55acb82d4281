"""Bad prompts and token ids given to ``generate``: one ``InputError`` line each, before any forward; no id
silently truncated or mapped to another token, no MASK left in a prompt, no stray third-party warning."""

from __future__ import annotations

import json
import re

import pytest
import torch
from badinput import assert_refused, one_line, run_cli

from dlm import CompositionError, InputError, Pipeline
from dlm.models.llada import embedded_demo_path
from dlm.testing import make_llada_checkpoint

from conftest import pipeline_config


@pytest.fixture(scope="module")
def pipe(tiny_ckpt):
    return Pipeline.from_config(pipeline_config(tiny_ckpt, iteration={"gen_length": 4, "block_length": 4, "steps": 4}))


def refused(pipe, *needles, **kwargs) -> str:
    with pytest.raises(InputError) as info:
        pipe.generate(**kwargs)
    return one_line(info.value, *needles)


# --- Python API argument types --------------------------------------------------------------------------


@pytest.mark.parametrize("prompts,needle", [([None], "prompt 0 is NoneType"), ([3], "prompt 0 is int"),
                                            (["ok", 7.5], "prompt 1 is float"), (b"hi", "got bytes"),
                                            (5, "got int")])
def test_prompts_that_are_not_strings_are_refused(pipe, prompts, needle):
    refused(pipe, needle, prompts=prompts)


@pytest.mark.parametrize(
    "ids,needle",
    [
        ([[[5, 6]]], "one level of nesting too many"),
        (torch.ones(1, 1, 3, dtype=torch.long), "1-D (one prompt) or 2-D"),
        ([["a", "b"]], "holds 'a' (str)"),
        ([[5.7, 6.2]], "holds 5.7 (float)"),
        ([5, 6.0], "holds 6.0 (float)"),
        ([[True, 5]], "holds True (bool)"),
        ([[2**70]], "beyond 64 bits"),
        (torch.tensor([[5.0, 6.0]]), "dtype torch.float32"),
        ("56", "a tensor or a list"),
        ([None], "row 0 is NoneType"),
    ],
)
def test_input_ids_of_the_wrong_shape_or_type_are_refused(pipe, ids, needle):
    refused(pipe, needle, input_ids=ids)


@pytest.mark.parametrize("ids,bad", [([[5, -1]], -1), ([[5, 86]], 86), (torch.tensor([10**9]), 10**9)])
def test_ids_outside_the_vocabulary_are_refused(pipe, ids, bad):
    refused(pipe, f"holds id {bad}", "[0, 86)", input_ids=ids)


def test_a_trace_that_is_not_callable_is_refused(pipe):
    refused(pipe, "trace must be a callable", input_ids=[[5]], trace=3)


# --- the MASK token and characters the tokenizer lacks ----------------------------------------------------


def test_the_mask_id_in_input_ids_is_refused(pipe):
    refused(pipe, "input_ids row 1 holds the MASK token (id 2) at position 1", input_ids=[[5, 6], [7, 2, 8]])


def test_the_mask_text_in_a_prompt_is_refused(pipe):
    refused(pipe, "prompt 0 holds the MASK token", prompts=["ab<|mdm_mask|>c"])


def test_characters_outside_the_vocabulary_are_refused_naming_them(pipe):
    msg = refused(pipe, "prompt 1:", "'é'", "'€'", "cannot represent", prompts=["abc", "café €"])
    assert "'<|endoftext|>'" in msg  # says what it would silently have become


def test_cli_refuses_characters_the_demo_tokenizer_lacks():
    proc = run_cli("generate", "héllo")
    assert_refused(proc, "generate", "'é'", "cannot represent")


def test_special_tokens_other_than_mask_are_still_allowed_in_prompts(pipe):
    out = pipe.generate(["a<|endoftext|>b"])
    assert len(out.generated[0]) == 4


def test_a_prompt_starting_with_an_end_token_is_refused(pipe):
    """The model would read such a prompt as ended before it began (issue #28): one rule for the API, the CLI
    and the server."""
    with pytest.raises(InputError, match="starts with the end token"):
        pipe.generate(["<|endoftext|>ab"])


# --- context length -----------------------------------------------------------------------------------


def test_a_long_prompt_gets_dlms_error_and_no_third_party_warning():
    """The demo tokenizer once claimed a 4096-token context while the model has 64; transformers then
    printed its own warning before dlm's error. Now the two agree and stderr is dlm's one line."""
    proc = run_cli("generate", "1" * 5000)
    lines = assert_refused(proc, "generate", "prompt 0 has 5000 tokens", "context of 64")
    assert not re.search(r"-\d", lines[0])  # no negative arithmetic


def test_shipped_demo_tokenizer_agrees_with_the_model_context():
    demo = embedded_demo_path()
    tokenizer_max = json.loads((demo / "tokenizer_config.json").read_text())["model_max_length"]
    assert tokenizer_max == json.loads((demo / "config.json").read_text())["max_sequence_length"] == 64


def test_checkpoint_writer_gives_the_tokenizer_the_model_context(tmp_path):
    path = make_llada_checkpoint(tmp_path / "c", max_sequence_length=77, seed=0)
    assert json.loads((path / "tokenizer_config.json").read_text())["model_max_length"] == 77


def test_gen_length_that_fills_the_context_is_refused_at_build_with_defaults():
    """``{model: llada}`` (the 64-token demo) with blockwise's default gen_length 128: refused when built,
    naming both numbers, instead of at the first prompt with a negative "shorten the prompt to -64"."""
    with pytest.raises(CompositionError) as info:
        Pipeline.from_config({"model": {"name": "llada"}, "iteration": {"name": "blockwise"},
                              "decoding": {"name": "low_confidence"}})
    one_line(info.value, "generates 128 tokens", "(64 tokens)", "at most 63")


def test_prompt_too_long_for_the_room_left_names_the_room(pipe):
    msg = refused(pipe, "prompt 0 has 600 tokens", "at most 508 tokens", input_ids=[[5] * 600])
    assert not re.search(r"-\d", msg)


def test_numpy_input_ids_are_read_like_a_tensor(pipe):
    np = pytest.importorskip("numpy")
    assert pipe.generate(input_ids=np.array([[5, 6]])).generated[0].numel() == 4
    refused(pipe, "dtype torch.float64", input_ids=np.array([[5.5]]))
