"""dlm serve on a revisable canvas (the tiny DiffusionGemma, written by dlm's own writer): the text stream sends only
committed tokens, and the per-step view shows the provisional canvas and its revisions truthfully."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="dlm serve needs the [serve] extra: pip install -e '.[test,serve]'")
import openai  # noqa: E402

from dlm import Pipeline  # noqa: E402
from dlm.testing import make_diffusion_gemma_checkpoint  # noqa: E402
from dlm.tools.serve.app import create_app  # noqa: E402
from dlm.tools.serve.server import ServerThread  # noqa: E402

PROMPT = "12+3="


@pytest.fixture(scope="module")
def pipe(tmp_path_factory) -> Pipeline:
    ckpt = make_diffusion_gemma_checkpoint(tmp_path_factory.mktemp("dg") / "dg", seed=5,
                                           generation={"max_denoising_steps": 4})
    return Pipeline.from_config({
        "model": {"name": "diffusion_gemma", "path": str(ckpt)},
        "iteration": {"name": "canvases", "gen_length": 16},
        "decoding": {"name": "entropy_bound", "entropy_bound": 1.0}, "cache": {"name": "none"},
        "dtype": "float32", "device": "cpu"})


@pytest.fixture(scope="module", params=["continuous", "static"])
def client(request, pipe):
    with ServerThread(create_app(pipe, batching=request.param)) as server:
        yield openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


def chunks(client, **kw) -> list[tuple[str, dict | None]]:
    """(text delta, per-step view) of each chunk of one streamed completion."""
    out = []
    for chunk in client.completions.create(model=client.models.list().data[0].id, prompt=PROMPT, stream=True,
                                           max_tokens=16, extra_body={"dlm_stream": "steps"}, **kw):
        text = chunk.choices[0].text if chunk.choices else ""
        out.append((text, (chunk.model_extra or {}).get("dlm")))
    return out


def test_the_text_stream_sends_only_committed_tokens(client, pipe):
    expected = pipe.generate([PROMPT])
    assert expected.nfe[0] > 2  # canvases redrafted over several steps: provisional tokens were there to leak
    sent = ""
    for text, view in chunks(client):
        sent += text
        assert expected.texts[0].startswith(sent)  # never a provisional token that a later step replaced
        if text:
            assert view["committed"], "text sent at a step that committed nothing"
    assert sent == expected.texts[0]


def test_the_step_view_marks_provisional_and_revised_positions(client, pipe):
    views = [v for _, v in chunks(client) if v is not None]
    final = pipe.generate([PROMPT]).generated[0].tolist()
    assert all(v["revisable"] for v in views)
    before, final_at = [None] * len(final), {}
    replaced = 0
    for v in views:
        canvas, provisional = v["canvas"], set(v["provisional"])
        changed = {p for p in range(len(canvas)) if canvas[p] != before[p]}
        assert set(v["revised"]) == changed & provisional  # a revision is exactly a changed provisional token
        assert set(v["committed"]) == {p for p in range(len(canvas)) if canvas[p] is not None
                                       and p not in provisional and p not in final_at}
        assert len(v["revised_pieces"]) == len(v["revised"]) and len(v["pieces"]) == len(v["committed"])
        for p, token in final_at.items():  # a committed position is final: never provisional, never changed
            assert p not in provisional and canvas[p] == token
        replaced += len({p for p in v["revised"] if before[p] is not None})
        final_at.update({p: canvas[p] for p in v["committed"]})
        before = canvas
    assert replaced > 0  # provisional tokens were replaced by later steps, and shown as revised
    assert [final_at[p] for p in sorted(final_at)] == final[: len(final_at)]
