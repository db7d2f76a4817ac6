"""Running the app with uvicorn on a background thread (``lmlab serve`` keeps the main thread for
the engine, see :meth:`~lmlab.serving.engine.Engine.run`), on a given socket or a free loopback port."""

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


def serve_until_interrupted(app, engine, sock: socket.socket, on_ready: Callable[[str], None] = print) -> None:
    """Serve ``app`` on ``sock`` until Ctrl-C (``KeyboardInterrupt`` comes out): uvicorn on a
    background thread and ``engine``'s scheduler on this one (None for an app without an
    engine: this thread only waits). ``on_ready`` gets the URL once the server listens. On the
    way out the engine stops first, so open streams end with an error event before the server
    closes."""
    with BackgroundServer(app, sock=sock) as server:
        on_ready(server.url)
        try:
            if engine is None:
                threading.Event().wait()
            else:
                engine.run()
        finally:
            if engine is not None:
                engine.stop()


class BackgroundServer:
    """``app`` served on a background thread at ``url`` inside a ``with`` block: on ``sock`` (a
    listening socket, see :func:`bound_socket`; closed on exit) or on ``host``:``port``
    (default: a free loopback port)."""

    def __init__(self, app, host: str = LOOPBACK, port: int = 0, sock: socket.socket | None = None):
        self.sock = sock if sock is not None else bound_socket(host, port)
        host, port = self.sock.getsockname()[:2]
        self.url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
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
