"""Property: whatever YAML mapping, ``--set`` overrides, prompts or token ids a user gives, the outcome is a
valid config and run, or a ``DlmError`` with a message; never another exception.

Values are drawn near the real ones (section and field names, component names, numbers around the limits)
mixed with junk, so both the accepting and the refusing paths are exercised. Runs are tiny: a 2-layer
model, a handful of tokens.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml
from hypothesis import event, given
from hypothesis import strategies as st

from dlm import DlmError, Pipeline
from dlm.config import PipelineConfig, load_config

from conftest import pipeline_config

FIELDS = {
    "model": ["path", "chat_template", "eos_token_ids", "mask_token_id", "bd_size"],
    "iteration": ["gen_length", "block_length", "steps", "early_stop", "eps", "sub_block_size"],
    "decoding": ["temperature", "threshold", "factor", "alg", "top_p", "top_k"],
    "cache": ["sub_block_cache", "sub_block_size"],
}
NAMES = {
    "model": ["llada", "dream", "llama"],
    "iteration": ["blockwise", "dream", "dream_blockwise", "block_diffusion", "nope"],
    "decoding": ["low_confidence", "threshold", "factor", "random", "dream", "strict_threshold", "tresh"],
    "cache": ["none", "prefix", "dual", "block", "cash"],
}
RUN = {"seed": None, "dtype": ["float32", "float64", "float8", "bfloat16"], "device": ["cpu", "cuda", "mps", "x"],
       "threads": None}

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 20), st.sampled_from([0, 1, 2, 4, 8, 16, 64, 2**63, -(2**70)]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, 0.5, 0.9, 1.0, 1.5]),
    st.text(max_size=6), st.sampled_from(["", "abc", "0.5", "cpu", "/nonexistent"]),
)
values = st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(st.text(max_size=3), scalars, max_size=2))


@st.composite
def sections(draw, section: str, ckpt: str):
    if draw(st.integers(0, 9)) == 0:
        return draw(values)  # not a mapping at all
    spec = {}
    if draw(st.integers(0, 9)):
        spec["name"] = draw(st.sampled_from(NAMES[section]))
    for key in draw(st.lists(st.sampled_from(FIELDS[section] + ["junk"]), max_size=3, unique=True)):
        spec[key] = draw(values)
    if section == "model" and draw(st.booleans()):
        spec["path"] = ckpt
    if section == "iteration" and draw(st.booleans()):  # often small enough to run
        n = draw(st.sampled_from([1, 2, 4, 8]))
        spec.update(gen_length=n, block_length=n, steps=n)
    return spec


@st.composite
def mappings(draw, ckpt: str):
    """Mostly a valid config with a few fields changed (so some runs happen), sometimes pure junk."""
    if draw(st.integers(0, 4)) == 0:
        raw = {section: draw(sections(section, ckpt)) for section in FIELDS if draw(st.integers(0, 5))}
    else:
        raw = pipeline_config(ckpt, iteration={"gen_length": 4, "block_length": 4, "steps": 4})
        raw["model"]["path"] = str(ckpt)
    for _ in range(draw(st.sampled_from([0, 0, 1, 2]))):
        section = draw(st.sampled_from([*FIELDS, *RUN, "junk"]))
        if section in FIELDS:
            spec = raw.setdefault(section, {})
            if not isinstance(spec, dict):
                continue
            key = draw(st.sampled_from(["name", *FIELDS[section], "junk"]))
            spec[key] = draw(st.sampled_from(NAMES[section]) if key == "name" else values)
        elif draw(st.integers(0, 5)) == 0:
            raw.pop(section, None)
        else:
            choices = RUN.get(section)
            raw[section] = draw(st.sampled_from(choices) if choices and draw(st.booleans()) else values)
    return raw


override_keys = st.one_of(
    st.sampled_from([f"{s}.{f}" for s, fs in FIELDS.items() for f in ["name", *fs]] + list(RUN)),
    st.sampled_from(["seed", "threads", "iteration.early_stop", "decoding.temperature"]),
    st.text(max_size=8),
)
override_values = st.one_of(
    st.sampled_from(["1", "0", "-1", "true", "abc", ".nan", ".inf", "[1, 2]", "{a: 1}", "{a", "[", "", "2.5",
                     "18446744073709551616", "llada", "threshold", "dual"]),
    st.text(max_size=6),
)
overrides = st.one_of(st.just([]), st.lists(st.one_of(
    st.builds(lambda k, v: f"{k}={v}", override_keys, override_values), st.text(max_size=8)), min_size=1, max_size=2))


def run_or_refuse(build) -> object:
    """``build()``; a DlmError is an accepted outcome, any other exception fails the property."""
    try:
        return build()
    except DlmError as err:
        assert str(err).strip(), "an error with no message"
        event(f"refused: {type(err).__name__}")
        return None


@given(data=st.data())
def test_random_yaml_and_overrides_give_a_valid_run_or_a_dlm_error(tiny_ckpt, data):
    raw = data.draw(mappings(str(tiny_ckpt)))
    sets = data.draw(overrides)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "random.yaml"
        path.write_text(yaml.safe_dump(raw, allow_unicode=True))
        config = run_or_refuse(lambda: load_config(path, sets))
        if config is None:
            return
        assert isinstance(config, PipelineConfig)
        pipe = run_or_refuse(lambda: Pipeline.from_config(config))
        if pipe is not None and run_or_refuse(lambda: pipe.generate(input_ids=[[5, 6, 7]])) is not None:
            event("generated")


ids = st.one_of(st.integers(-5, 100), st.sampled_from([2, 2**63, -(2**64)]), st.floats(), st.text(max_size=2),
                st.none(), st.booleans())
id_inputs = st.one_of(
    st.lists(ids, max_size=4),
    st.lists(st.lists(ids, max_size=4), max_size=3),
    st.lists(st.lists(st.lists(ids, max_size=2), max_size=2), max_size=2),
    ids,
)
prompt_inputs = st.one_of(st.text(max_size=8), st.lists(st.one_of(st.text(max_size=8), ids), max_size=3), ids)


@given(input_ids=id_inputs)
def test_random_input_ids_give_an_output_or_a_dlm_error(tiny_ckpt, input_ids):
    pipe = _tiny_pipeline(tiny_ckpt)
    out = run_or_refuse(lambda: pipe.generate(input_ids=input_ids))
    if out is not None:
        assert all(g.numel() == 4 for g in out.generated)


@given(prompts=prompt_inputs)
def test_random_prompts_give_an_output_or_a_dlm_error(tiny_ckpt, prompts):
    pipe = _tiny_pipeline(tiny_ckpt)
    out = run_or_refuse(lambda: pipe.generate(prompts))
    if out is not None:
        assert all(isinstance(t, str) for t in out.texts)


_PIPELINES: dict[str, Pipeline] = {}


def _tiny_pipeline(ckpt) -> Pipeline:
    key = str(ckpt)
    if key not in _PIPELINES:
        _PIPELINES[key] = Pipeline.from_config(
            pipeline_config(ckpt, iteration={"gen_length": 4, "block_length": 4, "steps": 4})
        )
    return _PIPELINES[key]


# --- hostile files: nesting, aliases, huge numbers, non-regular files (bounded work) ---------------------

hostile_text = st.one_of(
    st.builds(lambda n, c: "a: " + c * n, st.integers(1, 5000), st.sampled_from(["[", "{a: ", "- "])),
    st.builds(lambda k, w: "a0: &a0 [x]\n" + "".join(
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * w)}]\n" for i in range(1, k)), st.integers(1, 12),
        st.integers(1, 12)),
    st.builds(lambda k, v: f"model: {{name: llada}}\niteration: {{name: blockwise, {k}: {v}}}\n"
              "decoding: {name: low_confidence}\n",
              st.sampled_from(["gen_length", "block_length", "steps"]),
              st.sampled_from(["1e400", "-.inf", "18446744073709551616", str(10**40), "0x7fffffffffffffff"])),
    st.builds(lambda t: "x-base: &b {name: blockwise, gen_length: 4, block_length: 4, steps: 4}\n"
              f"model: {{name: llada}}\niteration: {{<<: {t}, steps: 2}}\ndecoding: low_confidence\n",
              st.sampled_from(["*b", "[*b]", "5", "[1, 2]", "*nope"])),
)


@given(text=hostile_text)
def test_hostile_yaml_is_refused_or_accepted_quickly_never_another_exception(text):
    import time

    from dlm.config_file import parse_yaml

    t0 = time.monotonic()
    raw = run_or_refuse(lambda: parse_yaml(text, "hostile.yaml"))
    if raw is not None:
        run_or_refuse(lambda: __import__("dlm.config", fromlist=["build_config"]).build_config(raw))
    assert time.monotonic() - t0 < 5, "bounded work took too long"


@given(kind=st.sampled_from(["fifo", "dir", "dangling", "loop", "sparse", "devnull"]))
def test_non_regular_config_files_are_refused_at_once(kind):
    import os

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        if kind == "fifo":
            os.mkfifo(path)
        elif kind == "dir":
            path.mkdir()
        elif kind == "dangling":
            path.symlink_to(Path(tmp) / "gone")
        elif kind == "loop":
            path.symlink_to(path)
        elif kind == "sparse":
            with open(path, "wb") as f:
                f.truncate(1 << 31)
        else:
            path = Path("/dev/null")
        assert run_or_refuse(lambda: load_config(path)) is None
