"""The ``lmlab`` command. Each subcommand is a thin function over the packages.

Every user mistake (bad value, missing file, corrupt checkpoint, unknown preset, text that is not
UTF-8, ...) prints one line on stderr and exits with code 2. A reader that stops early (``lmlab
generate ... | head``) ends the command quietly, as it ends Unix tools: exit code 141 (SIGPIPE).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, NoReturn, Sequence

from safetensors import SafetensorError

from lmlab.cli import attention, chess, compare, data, figures, fill_mask, finetune, generate, interop, serve, train
from lmlab.cli import recipe
from lmlab.cli.common import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, EXIT_USAGE, err as _err
from lmlab.cli.compare import cmd_compare
from lmlab.cli.data import cmd_data_prepare, cmd_tokenizer_decode, cmd_tokenizer_encode, cmd_tokenizer_train
from lmlab.cli.fill_mask import cmd_fill_mask
from lmlab.cli.finetune import cmd_classify, cmd_finetune, cmd_seq2seq
from lmlab.cli.generate import cmd_generate, cmd_score
from lmlab.cli.interop import cmd_chat, cmd_convert, cmd_embed
from lmlab.cli.recipe import cmd_recipe_list, cmd_recipe_run
from lmlab.cli.train import cmd_eval, cmd_info, cmd_train
from lmlab.errors import LmlabError, decode_stdin_as_utf8

__all__ = [
    "EXIT_BROKEN_PIPE", "EXIT_INTERRUPTED", "EXIT_USAGE", "build_parser", "main",
    "cmd_chat", "cmd_classify", "cmd_compare", "cmd_convert", "cmd_data_prepare", "cmd_embed", "cmd_eval",
    "cmd_fill_mask", "cmd_finetune", "cmd_generate", "cmd_info", "cmd_score", "cmd_seq2seq", "cmd_tokenizer_decode",
    "cmd_tokenizer_encode", "cmd_tokenizer_train", "cmd_train",
    "cmd_recipe_list", "cmd_recipe_run",
]


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage mistake in one line instead of a usage block."""

    def error(self, message: str) -> NoReturn:
        raise LmlabError(f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lmlab", description="Train, run and inspect Transformer language models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    train.add_train_parser(sub)
    generate.add_generate_parsers(sub)
    train.add_eval_info_parsers(sub)
    compare.add_compare_parser(sub)
    data.add_tokenizer_parser(sub)
    data.add_data_parser(sub)
    interop.add_interop_parsers(sub)
    fill_mask.add_fill_mask_parser(sub)
    finetune.add_finetune_parsers(sub)
    attention.add_attention_parser(sub)
    serve.add_serve_parser(sub)
    figures.add_figure_parsers(sub)
    chess.add_chess_parsers(sub)
    recipe.add_recipe_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lmlab`` command; returns the exit code."""
    try:
        decode_stdin_as_utf8()
        args = build_parser().parse_args(argv)
        handler: Callable[[argparse.Namespace], int] = args.func
        code = handler(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except LmlabError as exc:
        _err(f"lmlab: error: {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        _err("lmlab: interrupted")
        return EXIT_INTERRUPTED
    except OSError as exc:
        _err(f"lmlab: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
        return EXIT_USAGE
    except SafetensorError as exc:  # a safetensors file that cannot be written (a full disk) or read
        _err(f"lmlab: error: {str(exc).strip().splitlines()[0]}")
        return EXIT_USAGE


def _silence_stdout() -> None:
    """Point stdout at the null device, so the interpreter's last flush of what the closed pipe
    never took neither fails nor prints "Broken pipe"."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):  # a stand-in stdout without a file descriptor
        pass
    finally:
        os.close(devnull)
