"""``lmlab convert``, ``lmlab embed`` and ``lmlab chat``: Hugging Face and GGUF models."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lmlab.cli.common import err
from lmlab.errors import LmlabError, read_text_file


def cmd_convert(args: argparse.Namespace) -> int:
    if args.to == "hf":
        from lmlab.interop.export import export_hf
        from lmlab.training.run import load_run

        run = load_run(args.src, err)
        summary = export_hf(run.model, run.config.model, run.tokenizer, args.dst, labels=_class_names(run.state))
        for note in summary["notes"]:
            err(f"note: {note}")
        print(json.dumps(summary))
        return 0
    from lmlab.interop.hub import resolve_model_path
    from lmlab.interop.pretrained import load_pretrained
    from lmlab.tokenizers import tokenizer_to_json
    from lmlab.training.checkpoint import list_checkpoints, save_checkpoint
    from lmlab.training.config import RunConfig
    from lmlab.training.run import claim_run_dir

    dst = Path(args.dst)
    loaded = load_pretrained(resolve_model_path(args.src))
    if loaded.tokenizer is None:
        raise LmlabError(f"{args.src} has no tokenizer files; copy the model's tokenizer there before converting")
    state = {"config": RunConfig(model=loaded.model_config).to_dict(), "tokenizer": tokenizer_to_json(loaded.tokenizer),
             "family": loaded.family, "source": str(args.src)}
    if "labels" in loaded.extra:
        state["labels"] = loaded.extra["labels"]  # a classifier's class names, written back by --to hf
    lock = claim_run_dir(dst, resume=False)
    try:
        if list_checkpoints(dst):
            raise LmlabError(f"{dst} already holds a run; choose another destination")
        checkpoint = save_checkpoint(dst, 0, loaded.model, None, state)
    finally:
        lock.release()
    print(json.dumps({"run_dir": str(dst), "checkpoint": str(checkpoint), "family": loaded.family,
                      "parameters": sum(p.numel() for p in loaded.model.parameters())}))
    return 0


def _class_names(state: dict) -> list[str] | None:
    """A classifier run's class names: a converted classifier's ``labels``, a fine-tuned one's ``label_names``."""
    return state.get("labels") or state.get("finetune", {}).get("label_names")


def cmd_embed(args: argparse.Namespace) -> int:
    from lmlab.interop.embeddings import cosine_similarity_matrix, load_sentence_encoder
    from lmlab.interop.hub import resolve_model_path

    texts = list(args.text)
    if args.file:
        lines = read_text_file(args.file, "write one UTF-8 text per line").splitlines()
        texts += [line for line in lines if line.strip()]
    if not texts:
        raise LmlabError("nothing to embed; pass --text (repeatable) or --file")
    encoder = load_sentence_encoder(resolve_model_path(args.model))
    embeddings = encoder.encode(texts)
    if args.similarity:
        print(json.dumps({"similarity": cosine_similarity_matrix(embeddings).tolist()}))
        return 0
    for text, vector in zip(texts, embeddings.tolist()):
        print(json.dumps({"text": text, "embedding": vector}, ensure_ascii=False))
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from lmlab.generation import GenerationConfig, stream_tokens
    from lmlab.training.run import load_run

    run = load_run(args.model, err)
    tokenizer = run.tokenizer
    if getattr(tokenizer, "chat_template", None) is None or run.config.model.backbone != "decoder":
        raise LmlabError(f"{args.model} has no chat template (or is not a decoder); 'lmlab chat' needs a chat model")
    end_of_turn = tokenizer.end_of_turn_ids()
    messages = [{"role": "system", "content": args.system}] if args.system else []
    for line in sys.stdin:
        user = line.rstrip("\r\n")
        if not user.strip():
            continue
        messages.append({"role": "user", "content": user})
        prompt_text = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        prompt = tokenizer.encode(prompt_text)
        config = GenerationConfig(max_new_tokens=args.max_new_tokens, strategy=args.strategy,
                                  temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                  seed=args.seed, prompt_overflow="truncate", eos_ids=end_of_turn)
        reply_ids: list[int] = []
        printed = ""
        for token in stream_tokens(run.model, prompt, config):
            if token in end_of_turn:
                break
            reply_ids.append(token)
            text = tokenizer.decode_visible(reply_ids)
            sys.stdout.write(text[len(printed):])
            sys.stdout.flush()
            printed = text
        sys.stdout.write("\n")
        sys.stdout.flush()
        messages.append({"role": "assistant", "content": printed})
    return 0


def add_interop_parsers(sub: argparse._SubParsersAction) -> None:
    conv = sub.add_parser("convert", help="HF directory or GGUF file → lmlab run directory; or run → HF with --to hf")
    conv.add_argument("src", help="a Hugging Face model directory or Hub id, or a .gguf file (or, with --to hf, an lmlab run)")
    conv.add_argument("dst", help="the lmlab run directory to write (or, with --to hf, the HF directory)")
    conv.add_argument("--to", choices=("lmlab", "hf"), default="lmlab", help="direction (default: to lmlab)")
    conv.set_defaults(func=cmd_convert)

    emb = sub.add_parser("embed", help="sentence embeddings (JSON lines) from an encoder directory")
    emb.add_argument("model", help="a sentence-transformers or Hugging Face BERT/RoBERTa directory or Hub id")
    emb.add_argument("--text", action="append", default=[], help="a text to embed (repeatable)")
    emb.add_argument("--file", help="a file with one text per line")
    emb.add_argument("--similarity", action="store_true", help="print the cosine-similarity matrix instead")
    emb.set_defaults(func=cmd_embed)

    chat = sub.add_parser("chat", help="chat with a model that has a chat template (user turns from stdin)")
    chat.add_argument("model", help="an HF directory or Hub id, a .gguf file or a run directory with a chat template")
    chat.add_argument("--system", help="a system message")
    chat.add_argument("--max-new-tokens", type=int, default=256)
    chat.add_argument("--strategy", default="greedy", help="greedy or sample")
    chat.add_argument("--temperature", type=float, default=1.0)
    chat.add_argument("--top-k", type=int)
    chat.add_argument("--top-p", type=float)
    chat.add_argument("--seed", type=int)
    chat.set_defaults(func=cmd_chat)
