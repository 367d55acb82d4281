"""``compile: true`` gives the tokens of the eager forward (docs/performance.md).

The capture (dynamo graphs, guards, the shapes of every block geometry, in-place KV writes) is what these
tests exercise; they use the ``aot_eager`` backend, which runs the captured, functionalised graph without
inductor's code generation (minutes per shape on the project's 2-core CI machine). Inductor itself keeps
matmuls on the same kernels; its float64 check is a recorded command in docs/performance.md.
"""

from __future__ import annotations

import pytest
import torch

import dlm.models.compiled as compiled
from dlm.pipeline import Pipeline
from tests.conftest import pipeline_config

PROMPTS = [[5, 6, 7], [8, 9]]


@pytest.fixture
def aot_eager(monkeypatch):
    monkeypatch.setattr(compiled, "BACKEND", "aot_eager")
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize(("cache", "dtype"), [("dual", "float64"), ("prefix", "float32")])
def test_a_compiled_forward_gives_the_eager_tokens(tiny_ckpt, aot_eager, cache, dtype):
    cfg = pipeline_config(tiny_ckpt, cache={"name": cache}, dtype=dtype, decoding={"name": "threshold"})
    eager = Pipeline.from_config(cfg).generate(input_ids=PROMPTS)
    pipe = Pipeline.from_config({**cfg, "compile": True})
    assert compiled.is_compiled(pipe.model)
    out = pipe.generate(input_ids=PROMPTS)
    assert [g.tolist() for g in out.generated] == [g.tolist() for g in eager.generated]
    assert out.nfe == eager.nfe


def test_compile_is_off_by_default(tiny_ckpt):
    assert not compiled.is_compiled(Pipeline.from_config(pipeline_config(tiny_ckpt)).model)
