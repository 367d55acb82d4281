"""dlm serve: a real uvicorn server on a loopback port, driven by the `openai` client and raw HTTP."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from email.message import Message

import pytest

pytest.importorskip("fastapi", reason="dlm serve needs the [serve] extra: pip install -e '.[test,serve]'")
import openai  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from dlm import Pipeline  # noqa: E402
from dlm.config import default_config_path  # noqa: E402
from dlm.testing import make_llada_checkpoint  # noqa: E402
from dlm.tools.serve.app import create_app  # noqa: E402
from dlm.tools.serve.server import ServerThread  # noqa: E402

MODEL = "dlm-demo"
PROMPTS = ["123+456=", "rev:abcd=", "sort:dcba=", "pair:50=", "perm:abc=", "77+8=", "rev:hello=", "sort:zyx="]


def demo(**overrides) -> Pipeline:
    return Pipeline.from_yaml(default_config_path(), overrides=[f"{k}={v}" for k, v in overrides.items()])


@pytest.fixture(scope="module")
def server():
    with ServerThread(create_app(demo(), max_batch_size=16)) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def reference() -> Pipeline:
    """A separate pipeline on the demo model, for the answers the server must reproduce."""
    return demo()


def post(url: str, body: bytes | dict) -> tuple[int, dict, Message]:
    """Raw POST (no client-side validation): status, JSON body, headers."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read()), r.headers
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), err.headers


def health(server) -> dict:
    with urllib.request.urlopen(f"{server.url}/health", timeout=10) as r:
        return json.loads(r.read())


def streamed(client, **kw) -> tuple[str, list, str | None]:
    """Concatenated text deltas, the per-step views and the finish reason of one streamed completion."""
    text, views, finish = "", [], None
    for chunk in client.completions.create(model=MODEL, stream=True, **kw):
        if chunk.choices:
            text += chunk.choices[0].text
            finish = chunk.choices[0].finish_reason or finish
        if (chunk.model_extra or {}).get("dlm"):
            views.append(chunk.model_extra["dlm"])
    return text, views, finish


def test_models_lists_the_served_model_with_its_limits(client):
    (card,) = client.models.list().data
    assert card.id == MODEL
    assert card.model_extra["dlm"]["max_tokens"] == 56  # context 64, blocks of 8, room for a prompt token
    assert card.model_extra["dlm"]["block_length"] == 8


def test_retrieving_an_unknown_model_is_404(client):
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")


def test_serve_command_refuses_a_missing_config_in_one_line(capsys):
    from dlm.cli import main

    assert main(["serve", "--config", "no-such.yaml", "--port", "0"]) == 2  # a DlmError: exit code 2, as argparse
    assert capsys.readouterr().err.strip() == "dlm serve: error: config file no-such.yaml does not exist"


def test_non_streamed_text_equals_pipeline_generate(client, reference):
    expected = reference.generate(PROMPTS).texts
    got = [client.completions.create(model=MODEL, prompt=p).choices[0].text for p in PROMPTS]
    assert got == expected
    assert expected[0] == "579"


def test_a_list_of_prompts_is_one_batch_with_a_choice_per_prompt(client, reference):
    out = client.completions.create(model=MODEL, prompt=PROMPTS[:3])
    assert [c.index for c in out.choices] == [0, 1, 2]
    assert [c.text for c in out.choices] == reference.generate(PROMPTS[:3]).texts


def test_token_id_prompts_are_accepted(client, reference):
    ids = reference.model.tokenizer.encode("123+456=")
    assert client.completions.create(model=MODEL, prompt=ids).choices[0].text == "579"


def test_streamed_deltas_concatenate_to_the_generated_text(client, reference):
    for prompt, expected in zip(PROMPTS[:4], reference.generate(PROMPTS[:4]).texts):
        text, _, finish = streamed(client, prompt=prompt)
        assert text == expected
        assert finish == "stop"


def test_step_canvases_never_change_a_committed_token_and_end_at_the_final_canvas(client, reference):
    final = reference.generate(["123+456="]).generated[0].tolist()
    _, views, _ = streamed(client, prompt="123+456=", extra_body={"dlm_stream": "steps"})
    assert [v["step"] for v in views] == list(range(1, len(views) + 1))
    before = [None] * len(final)
    for v in views:
        for pos, (old, new) in enumerate(zip(before, v["canvas"])):
            assert old is None or new == old, f"step {v['step']} changed committed position {pos}"
        assert v["committed"] == [p for p in range(len(final)) if before[p] is None and v["canvas"][p] is not None]
        before = v["canvas"]
    assert before == final
    assert views[-1]["nfe"] == reference.generate(["123+456="]).nfe[0]


def test_usage_chunk_when_asked(client):
    chunks = list(client.completions.create(
        model=MODEL, prompt="123+456=", stream=True, stream_options={"include_usage": True}
    ))
    assert chunks[-1].usage.completion_tokens == 3  # "579"
    assert chunks[-1].usage.prompt_tokens == 8


def test_max_tokens_cuts_the_answer_with_finish_reason_length(client):
    out = client.completions.create(model=MODEL, prompt="123+456=", max_tokens=2)
    assert (out.choices[0].text, out.choices[0].finish_reason) == ("57", "length")
    assert streamed(client, prompt="123+456=", max_tokens=2)[::2] == ("57", "length")


def test_max_tokens_beyond_a_block_generates_more_blocks(client):
    """max_tokens 12 -> generation length 16 (two blocks of 8, 8 steps each), as the config would give."""
    expected = demo(**{"iteration.gen_length": 16, "iteration.steps": 16}).generate(["rev:abcdefghij="]).texts[0]
    out = client.completions.create(model=MODEL, prompt="rev:abcdefghij=", max_tokens=12)
    assert out.choices[0].text == expected[:12]
    text, views, _ = streamed(client, prompt="rev:abcdefghij=", max_tokens=12, extra_body={"dlm_stream": "steps"})
    assert text == expected[:12]
    assert len(views[0]["canvas"]) == 16


def test_a_row_whose_answer_is_settled_stops_costing_forwards(client):
    """Once the committed prefix reaches an end token, the row leaves the batch: no forward for block 2."""
    full = demo(**{"iteration.gen_length": 16, "iteration.steps": 16}).generate(["123+456="])
    assert full.nfe[0] == 16
    out = client.completions.create(model=MODEL, prompt="123+456=", max_tokens=16)
    assert out.choices[0].text == full.texts[0] == "579"
    assert out.model_extra["dlm"]["nfe"] == [8]


def test_stop_string_cuts_the_answer(client):
    out = client.completions.create(model=MODEL, prompt="123+456=", stop=["7"])
    assert (out.choices[0].text, out.choices[0].finish_reason) == ("5", "stop")
    assert streamed(client, prompt="123+456=", stop="79")[::2] == ("5", "stop")


def test_choices_sample_with_consecutive_seeds(client):
    """n choices are rows seeded seed, seed + 1, ...: choice i equals a one-choice request with seed + i."""
    kw = dict(model=MODEL, prompt="perm:abcde=", temperature=1.5)
    many = client.completions.create(n=3, seed=40, **kw)
    alone = [client.completions.create(seed=40 + i, **kw).choices[0].text for i in range(3)]
    assert [c.text for c in many.choices] == alone
    assert len(set(alone)) > 1


def test_sixteen_concurrent_streaming_clients_get_their_single_request_answers(client, server):
    """Greedy and sampled requests at once: each answer equals the same request sent alone (no cross-talk)."""
    requests = [dict(prompt=PROMPTS[i % len(PROMPTS)]) for i in range(8)]
    requests += [dict(prompt=PROMPTS[i % len(PROMPTS)], temperature=1.0, seed=100 + i) for i in range(8)]
    alone = [client.completions.create(model=MODEL, **kw).choices[0].text for kw in requests]
    batches_before = health(server)["batches"]
    start = threading.Barrier(len(requests))

    def one(kw):
        start.wait(timeout=30)
        return streamed(client, **kw)[0]

    with ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(one, requests, timeout=120))
    assert answers == alone
    # a client's stream ends when its answer is settled, which can be just before the worker's generation
    # returns: wait (bounded) for the worker to go idle, then nothing may be left queued or running
    deadline = time.monotonic() + 20
    while (after := health(server))["running_rows"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert after["batches"] - batches_before < len(requests)  # some requests shared a batch
    assert (after["queued"], after["running_rows"]) == (0, 0)


@pytest.mark.parametrize(
    "body, param",
    [
        (b'{"model": "dlm-demo", "prompt": "1+1=",', None),  # malformed JSON
        (b'["not", "an", "object"]', None),
        ({"model": MODEL, "prompt": "1+1=", "max_tokens": "5"}, "max_tokens"),
        ({"model": MODEL, "prompt": "1+1=", "max_tokens": 10**9}, "max_tokens"),
        ({"model": MODEL, "prompt": "1+1=", "temperature": -0.5}, "temperature"),
        ({"model": MODEL, "prompt": "1+1=", "top_k": 5}, "top_k"),
        ({"model": MODEL, "prompt": 123}, "prompt"),
        ({"model": MODEL, "prompt": "1+1=", "stream": "yes"}, "stream"),
        ({"model": MODEL, "prompt": "9" * 60}, "prompt"),  # longer than the context with 8 answer tokens
        ({"model": MODEL, "prompt": ""}, "prompt"),
        ({"model": MODEL, "prompt": [[5, 9999]]}, "prompt"),
        ({"model": MODEL, "prompt": "1+1=", "n": 17}, "n"),
        ({"model": MODEL, "prompt": "1+1=", "dlm_stream": "steps"}, "dlm_stream"),
        ({"prompt": "1+1="}, "model"),
    ],
)
def test_bad_request_gets_400_naming_the_field_and_the_server_keeps_serving(server, body, param):
    status, err, _ = post(f"{server.url}/v1/completions", body)
    assert status == 400
    assert err["error"]["type"] == "invalid_request_error"
    assert err["error"]["param"] == param
    if param:
        assert param in err["error"]["message"]
    status, ok, _ = post(f"{server.url}/v1/completions", {"model": MODEL, "prompt": "123+456="})
    assert (status, ok["choices"][0]["text"]) == (200, "579")


def test_unknown_model_is_404_as_openai_answers(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.completions.create(model="gpt-4", prompt="1+1=")
    assert err.value.body["code"] == "model_not_found"
    assert client.completions.create(model=MODEL, prompt="123+456=").choices[0].text == "579"


def test_chat_without_a_chat_template_is_400(client):
    with pytest.raises(openai.BadRequestError, match="no chat template") as err:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "1+1="}])
    assert err.value.body["param"] == "messages"


@pytest.fixture(scope="module")
def chat_server(tmp_path_factory):
    """The demo model with a chat template that just concatenates the messages."""
    src = default_config_path().parent.parent / "assets" / "demo"
    ckpt = tmp_path_factory.mktemp("chat") / "demo-chat"
    ckpt.mkdir()
    for f in src.iterdir():
        (ckpt / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((ckpt / "tokenizer_config.json").read_text())
    cfg["chat_template"] = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    (ckpt / "tokenizer_config.json").write_text(json.dumps(cfg))
    pipe = demo(**{"model.path": ckpt, "model.chat_template": "true"})
    with ServerThread(create_app(pipe)) as s:
        yield s, pipe


def test_chat_completion_applies_the_template_and_streams_the_same_text(chat_server):
    server, pipe = chat_server
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)
    messages = [{"role": "system", "content": "rev:"}, {"role": "user", "content": "abc="}]
    expected = pipe.generate(["rev:abc="]).texts[0]
    out = client.chat.completions.create(model="demo-chat", messages=messages)
    assert out.choices[0].message.content == expected == "cba"
    chunks = list(client.chat.completions.create(model="demo-chat", messages=messages, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected


@pytest.fixture
def endless_pipeline(tmp_path) -> Pipeline:
    """A random model whose head never proposes an end token, generating 4000 tokens one per step in blocks
    of 8 (minutes on a CPU): a request that keeps the worker busy until its client leaves, however fast a
    step is (960 tokens could finish before a loaded machine had queued the second request)."""
    ckpt = make_llada_checkpoint(tmp_path / "endless", max_sequence_length=4096, seed=5)
    tensors = load_file(str(ckpt / "model.safetensors"))
    tensors["model.transformer.ff_out.weight"][[0, 1]] = 0.0  # EOS and EOT logits stay 0, below the argmax
    save_file(tensors, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
    return Pipeline.from_config({
        "model": {"name": "llada", "path": str(ckpt)},
        "iteration": {"name": "blockwise", "gen_length": 4000, "block_length": 8, "steps": 4000},
        "decoding": {"name": "low_confidence"},
        "threads": 1,
    })


def test_full_queue_answers_429_with_retry_after_and_a_gone_client_stops_its_row(endless_pipeline):
    with ServerThread(create_app(endless_pipeline, max_batch_size=1, max_queue=1, model_name="m")) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)
        busy = client.completions.create(model="m", prompt="ab", stream=True, extra_body={"dlm_stream": "steps"})
        next(iter(busy))  # the endless request is running
        queued = ThreadPoolExecutor(1).submit(client.completions.create, model="m", prompt="ab", max_tokens=4)
        deadline = time.monotonic() + 30
        while health(server)["queued"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        status, err, headers = post(f"{server.url}/v1/completions", {"model": "m", "prompt": "ab"})
        assert status == 429
        assert err["error"]["code"] == "queue_full"
        assert int(headers["Retry-After"]) >= 1
        busy.close()  # the client goes away: its row is cancelled, and the queued request runs
        assert queued.result(timeout=60).choices[0].finish_reason == "length"
        stats = health(server)
        assert stats["cancelled_rows"] == 1
        assert stats["rows"] == 2


def test_stopped_worker_answers_503_with_retry_after(endless_pipeline):
    app = create_app(endless_pipeline, model_name="m")
    with ServerThread(app) as server:
        app.state.api.worker.close()
        status, err, headers = post(f"{server.url}/v1/completions", {"model": "m", "prompt": "ab"})
    assert status == 503
    assert "Retry-After" in headers


@pytest.mark.parametrize("batching", ["continuous", "static"])
def test_a_failing_generation_answers_an_error_and_the_worker_serves_the_next_request(batching):
    """A generation that raises (here: every sampled one) fails its own request, not the server."""
    app = create_app(demo(), model_name="m", batching=batching)
    variants = app.state.api.variants
    build = variants.pipeline

    def pipeline(key):
        pipe = build(key)
        if key[1] is not None:  # sampled requests: a pipeline whose generation breaks
            def broken(*args, **kwargs):
                raise RuntimeError("out of memory")
            pipe.generate = pipe.step = broken  # static batching calls generate, continuous calls step
        return pipe

    variants.pipeline = pipeline
    with ServerThread(app) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)
        status, err, _ = post(f"{server.url}/v1/completions", {"model": "m", "prompt": "1+1=", "temperature": 1.0})
        assert (status, err["error"]["type"]) == (500, "server_error")
        assert "out of memory" in err["error"]["message"]
        with pytest.raises(openai.APIError, match="out of memory"):
            list(client.completions.create(model="m", prompt="1+1=", temperature=1.0, stream=True))
        assert client.completions.create(model="m", prompt="123+456=").choices[0].text == "579"
        assert health(server)["failed_batches"] == 2


def test_a_request_joins_a_running_generation_and_ends_before_it(endless_pipeline):
    """Continuous batching: a request sent while a long generation runs is admitted at the next step, finishes
    long before the running one, and gives what it gives alone."""
    app = create_app(endless_pipeline, max_batch_size=4, model_name="m")
    with ServerThread(app) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)
        busy = client.completions.create(model="m", prompt="ab", stream=True, extra_body={"dlm_stream": "steps"})
        chunks = iter(busy)
        next(chunks)  # the endless request is running
        other = client.completions.create(model="m", prompt="b", stream=True)  # the same settings: it joins
        next(iter(other))
        running = health(server)
        assert running["running_rows"] == 2 and running["joins"] >= 1
        # a request with other settings runs beside them, never waiting for them, and ends first
        short = client.completions.create(model="m", prompt="abc", max_tokens=8, seed=3)
        assert health(server)["running_rows"] == 2  # the endless rows still run
        variants = app.state.api.variants
        alone = variants.pipeline(variants.key(8, None)).generate(prompts=["abc"], seeds=[3])
        assert short.choices[0].text == alone.texts[0]
        busy.close()
        other.close()


def test_memory_budget_bounds_admission_with_429_and_400(endless_pipeline):
    from dlm.engine import row_bytes

    one = row_bytes(endless_pipeline, 2)
    app = create_app(endless_pipeline, max_batch_size=4, model_name="m", memory_budget=int(one * 1.5))
    with ServerThread(app) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)
        busy = client.completions.create(model="m", prompt="ab", stream=True)
        next(iter(busy))
        status, err, headers = post(f"{server.url}/v1/completions", {"model": "m", "prompt": "ab"})
        assert status == 429 and "memory budget" in err["error"]["message"]
        assert int(headers["Retry-After"]) >= 1
        status, err, _ = post(f"{server.url}/v1/completions", {"model": "m", "prompt": "ab", "n": 2})
        assert status == 400 and "memory budget" in err["error"]["message"]  # could never fit: not a retry
        busy.close()
        deadline = time.monotonic() + 30  # the budget comes back when the row leaves
        while health(server)["running_rows"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert app.state.api.worker.reserved == 0


def test_serve_command_reads_batching_and_memory_budget():
    import argparse

    from dlm.commands.serve import add_arguments, memory_size

    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--batching", "static", "--memory-budget", "512MiB"])
    assert (args.batching, args.memory_budget) == ("static", 512 * 2**20)
    assert p.parse_args([]).batching == "continuous"
    assert memory_size("2GiB") == 2 * 2**30 and memory_size("1e9") == 10**9
    with pytest.raises(argparse.ArgumentTypeError, match="not a memory size"):
        memory_size("lots")
