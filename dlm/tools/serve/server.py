"""Running the app: uvicorn in the foreground (``dlm serve``) or in a thread on a loopback port (tests,
embedding in a notebook)."""

from __future__ import annotations

import threading
import time

import uvicorn
from fastapi import FastAPI


class ServerThread:
    """``with ServerThread(app) as s: ... s.url ...``: uvicorn on ``host`` and an ephemeral port, stopped on exit."""

    def __init__(self, app: FastAPI, *, host: str = "127.0.0.1", port: int = 0, start_timeout: float = 60.0) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, name="dlm-serve-http", daemon=True)
        self.host, self.start_timeout = host, start_timeout
        self.port = port

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {self.host} within {self.start_timeout} s")
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"
