"""Servers for the serving tests (skipped without the ``serve`` extra; the engine tests need none):
a tiny random character-level decoder behind the real engine and app, on a free loopback port,
for the whole module."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # serving_helpers
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: browser.py, tiny_models.py

from lmlab.serving.engine import Engine  # noqa: E402
from serving_helpers import BODY_LIMIT, MODEL_NAME, TinyServer, tiny_decoder  # noqa: E402


@pytest.fixture(scope="module")
def server():
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    from lmlab.serving.app import create_app
    from lmlab.serving.server import BackgroundServer

    model, tokenizer = tiny_decoder()
    engine = Engine(model, max_batch=4, max_queue=64)
    engine.start()
    app = create_app(model, tokenizer, engine, model_name=MODEL_NAME, max_body_bytes=BODY_LIMIT)
    try:
        with BackgroundServer(app) as running:
            yield TinyServer(running.url, model, tokenizer, engine)
    finally:
        engine.stop()
