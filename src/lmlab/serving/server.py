"""Running the app with uvicorn: in the foreground (``lmlab serve``) or on a background thread
bound to a free loopback port (tests, the load benchmark)."""

from __future__ import annotations

import socket
import threading
from typing import Callable

import uvicorn

from lmlab.errors import LmlabError

LOOPBACK = "127.0.0.1"


def bound_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (port 0: a free one); one line when it cannot be had."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise LmlabError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --host or --port") from None
    sock.listen(2048)
    return sock


def serve_forever(app, sock: socket.socket, on_ready: Callable[[str], None] = print) -> None:
    """Serve ``app`` on ``sock`` until interrupted; ``on_ready`` gets the URL once it listens."""
    host, port = sock.getsockname()[:2]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    on_ready(f"http://{'[' + host + ']' if ':' in host else host}:{port}")
    server.run(sockets=[sock])


class BackgroundServer:
    """``app`` served on a background thread at ``url`` (loopback, a free port) inside a ``with`` block."""

    def __init__(self, app, host: str = LOOPBACK, port: int = 0):
        self.sock = bound_socket(host, port)
        host, port = self.sock.getsockname()[:2]
        self.url = f"http://{host}:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "BackgroundServer":
        self.thread.start()
        while not self.server.started and self.thread.is_alive():
            self.thread.join(0.01)
        if not self.server.started:
            raise LmlabError(f"the server at {self.url} did not start")
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join()
        self.sock.close()
