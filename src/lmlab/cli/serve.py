"""``lmlab serve``: an OpenAI-compatible HTTP server for one model (FastAPI + uvicorn)."""

from __future__ import annotations

import argparse

from lmlab.cli.common import err, positive
from lmlab.cli.train import DEVICE_HELP
from lmlab.errors import LmlabError, require_optional

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def cmd_serve(args: argparse.Namespace) -> int:
    _check_args(args)
    require_optional("fastapi", "serve", "lmlab serve")
    require_optional("uvicorn", "serve", "lmlab serve")
    from lmlab.serving.server import bound_socket, serve_until_interrupted

    sock = bound_socket(args.host, args.port)  # a taken port fails before the model loads
    try:
        app, engine = _build_app(args)
    except BaseException:
        sock.close()
        raise
    if args.host not in LOOPBACK_HOSTS:
        err(f"lmlab: warning: --host {args.host} makes the server reachable from other machines"
            + ("" if args.api_key else "; consider --api-key"))
    serve_until_interrupted(app, engine, sock, lambda url: err(f"lmlab: serving {args.model} at {url} (playground: {url}/)"))
    return 0


def _check_args(args: argparse.Namespace) -> None:
    if not 0 <= args.port <= 65535:
        raise LmlabError(f"--port must be between 0 and 65535, got {args.port}")
    positive(args.max_batch, "--max-batch")
    positive(args.max_queue, "--max-queue")
    from lmlab.kernels.build import MAX_ROWS  # (torch loads only once a command runs)

    if not 0 <= args.draft_tokens < MAX_ROWS:
        raise LmlabError(f"--draft-tokens must be between 0 and {MAX_ROWS - 1}, got {args.draft_tokens}")
    if args.api_key is not None and not args.api_key.strip():
        raise LmlabError("--api-key is empty; give a key or leave the flag out")


def _build_app(args: argparse.Namespace):
    """The app and its warmed-up engine, not started (None for an encoder, which serves embeddings)."""
    import torch

    from lmlab.models.interface import ENCODER, require_generative
    from lmlab.serving.app import create_app
    from lmlab.serving.engine import Engine
    from lmlab.training.run import load_run

    run = load_run(args.model, err, device=args.device)
    model = run.model
    if model.structure == ENCODER:
        return create_app(model, run.tokenizer, None, model_name=args.model, api_key=args.api_key,
                          embedder=embedder_for(args.model)), None
    require_generative(model)
    if args.dtype == "bfloat16":
        model = model.to(torch.bfloat16)
    engine = Engine(model, max_batch=args.max_batch, max_queue=args.max_queue, draft_tokens=args.draft_tokens)
    engine.warm_up()
    return create_app(model, run.tokenizer, engine, model_name=args.model, api_key=args.api_key), engine


def embedder_for(path: str):
    """Sentence embeddings of the encoder directory ``path`` as lists of floats."""
    from lmlab.interop.embeddings import load_sentence_encoder
    from lmlab.interop.hub import resolve_model_path
    from lmlab.interop.pretrained import is_pretrained_path

    folder = resolve_model_path(path)
    if not is_pretrained_path(folder):
        raise LmlabError(f"{path} is an lmlab encoder run; /v1/embeddings serves Hugging Face or sentence-transformers "
                         "encoder directories: export it first with 'lmlab convert RUN DIR --to hf'")
    encoder = load_sentence_encoder(folder)
    return lambda texts: encoder.encode(list(texts)).tolist()


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help="an OpenAI-compatible HTTP server (completions, chat, embeddings, playground)")
    serve.add_argument("model", help="a run directory, a Hugging Face model directory or Hub id, or a GGUF file")
    serve.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="the TCP port (default 8000; 0: any free one)")
    serve.add_argument("--max-batch", type=int, default=16, help="requests decoded together (default 16)")
    serve.add_argument("--max-queue", type=int, default=64,
                       help="requests that may wait for a batch slot; more are answered 429 (default 64)")
    serve.add_argument("--draft-tokens", type=int, default=6, metavar="K",
                       help="a greedy request decoding alone, float32 on CPU: an int8 copy of the model proposes K tokens "
                            "per step and the model keeps those it agrees with (same tokens, faster; 0: off)")
    serve.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on every route but /health")
    serve.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                       help="weights and KV cache in this type")
    serve.add_argument("--device", default="cpu", help=DEVICE_HELP + " (default cpu)")
    serve.set_defaults(func=cmd_serve)
