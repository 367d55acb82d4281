"""The server never answers 500 for a bad request (issue #28, item 3): text the tokenizer cannot represent,
the MASK token, control characters, a leading end token, non-finite numbers, options that need another
option and seeds out of range are 400s naming the field; bad ``--port``, ``--host`` and ``--max-tokens`` are
refused before the server starts; a client that disconnects leaves no traceback in the log.

A live server (uvicorn on a loopback port) answers the requests; the command-line checks run ``python -m dlm
serve`` in a subprocess under a time bound.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

pytest.importorskip("fastapi", reason="dlm serve needs the [serve] extra: pip install -e '.[test,serve]'")
from badinput import assert_refused, cli_refuses, run_cli  # noqa: E402

from dlm import ConfigError, Pipeline  # noqa: E402
from dlm.config import MAX_SEED, default_config_path  # noqa: E402
from dlm.tools.serve.app import create_app  # noqa: E402
from dlm.tools.serve.server import ServerThread  # noqa: E402

MODEL = "dlm-demo"


@pytest.fixture(scope="module")
def server():
    with ServerThread(create_app(Pipeline.from_yaml(default_config_path()), max_batch_size=4)) as s:
        yield s


def post(url: str, body: bytes | dict) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.mark.parametrize(
    "body, param, needle",
    [
        ({"prompt": "caf\u00e9=", "max_tokens": 4}, "prompt", "cannot represent"),
        ({"prompt": ["1+1=", "\u00e9"]}, "prompt", "prompt[1]"),
        ({"prompt": "1+1=<|mdm_mask|>"}, "prompt", "MASK token"),
        ({"prompt": [5, 6, 2]}, "prompt", "MASK token"),
        ({"prompt": "1+1=\x00"}, "prompt", "control character"),
        ({"prompt": "1+\x1b[31m1="}, "prompt", "U+001B"),
        ({"prompt": "<|endoftext|>1+1="}, "prompt", "starts with the end token"),
        ({"prompt": [0, 7, 16, 7, 19]}, "prompt", "starts with the end token"),
        (b'{"model": "dlm-demo", "prompt": "1+1=", "temperature": Infinity}', "temperature", "finite"),
        (b'{"model": "dlm-demo", "prompt": "1+1=", "temperature": -Infinity}', "temperature", "finite"),
        (b'{"model": "dlm-demo", "prompt": "1+1=", "temperature": 1e999}', "temperature", "finite"),
        ({"prompt": "1+1=", "stream_options": {"include_usage": True}}, "stream_options", "stream: true"),
        ({"prompt": "1+1=", "seed": MAX_SEED + 1}, "seed", str(MAX_SEED)),
        ({"prompt": "1+1=", "seed": MAX_SEED, "n": 2}, "seed", "one seed per row"),
        ({"prompt": ["1+1=", 5]}, "prompt", "prompt[1] is int 5"),
        ({"prompt": [[5, 6], [7, "x"]]}, "prompt", "prompt[1][1]"),
        ({"prompt": [[5, 6], 7]}, "prompt", "prompt[1] is int 7"),
        ({"prompt": [5, 6.5]}, "prompt", "prompt[1] is float 6.5"),
        ({"prompt": [None]}, "prompt", "prompt[0] is NoneType"),
    ],
)
def test_bad_prompts_and_numbers_are_400_naming_the_field(server, body, param, needle):
    if isinstance(body, dict):
        body = {"model": MODEL, **body}
    status, err = post(f"{server.url}/v1/completions", body)
    assert status == 400, err
    assert err["error"]["param"] == param, err
    assert needle in err["error"]["message"], err
    assert "\n" not in err["error"]["message"]


def test_a_seed_at_the_top_of_the_range_is_accepted(server):
    status, out = post(f"{server.url}/v1/completions", {"model": MODEL, "prompt": "123+456=", "seed": MAX_SEED})
    assert status == 200, out


def test_max_tokens_beyond_the_model_is_refused_not_capped():
    pipe = Pipeline.from_yaml(default_config_path())
    with pytest.raises(ConfigError, match="--max-tokens 1000 is beyond what this model can answer: at most 56"):
        create_app(pipe, max_tokens=1000)
    with pytest.raises(ConfigError, match="below the config's iteration.gen_length 8"):
        create_app(pipe, max_tokens=4)


@pytest.mark.parametrize("args, needle", [
    (["--port", "70000"], "--port 70000 is not a TCP port"),
    (["--host", "256.1.1.1"], "does not resolve"),
])
def test_serve_refuses_bad_listen_settings_before_loading_the_model(args, needle):
    proc = run_cli("serve", *args, timeout=60)
    assert_refused(proc, "serve", needle)
    assert "model" not in proc.stdout  # nothing started


@pytest.mark.parametrize("args, needle", [
    (["--port", "-1"], "--port -1 is not a TCP port"),
    (["--host", "no such host"], "--host 'no such host' is not an address"),
    (["--max-tokens", "0"], "--max-tokens must be a positive"),
    (["--max-batch-size", "0"], "--max-batch-size must be a positive"),
])
def test_serve_refuses_bad_settings_in_one_line_in_process(capsys, args, needle):
    """The same refusals through ``main`` (the console script's code), without a fresh interpreter each."""
    cli_refuses(capsys, "serve", *args, needles=(needle,))


def test_serve_refuses_a_port_in_use_before_loading_the_model():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_cli("serve", "--port", port, timeout=60)
    assert_refused(proc, "serve", f"port {port} is already in use")


def test_serve_refuses_max_tokens_beyond_the_context_before_serving():
    proc = run_cli("serve", "--port", "0", "--max-tokens", "100000", timeout=60)
    assert_refused(proc, "serve", "--max-tokens 100000 is beyond what this model can answer")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_client_that_disconnects_leaves_no_traceback_in_the_log(tmp_path):
    port = _free_port()
    log = open(tmp_path / "serve.log", "w+")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "dlm", "serve", "--port", str(port), "--set", "iteration.gen_length=48",
                             "--set", "iteration.steps=48"], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, open(tmp_path / "serve.log").read()
                time.sleep(0.2)
        body = {"model": MODEL, "prompt": "rev:abcdefgh=", "stream": True, "max_tokens": 48,
                "dlm_stream": "steps"}
        for stream in (True, False):
            body["stream"] = stream
            if not stream:
                body.pop("dlm_stream")
            data = json.dumps(body).encode()
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
                if stream:
                    s.recv(200)  # the first chunk has arrived: the row is running
            time.sleep(1.5)  # the server notices and cancels
        status, ok = post(f"http://127.0.0.1:{port}/v1/completions", {"model": MODEL, "prompt": "123+456="})
        assert status == 200, ok
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    text = open(tmp_path / "serve.log").read()
    assert "Traceback" not in text, text
    assert "Exception" not in text, text
