"""Text ↔ ids: character, byte-level BPE, WordPiece and chess PGN tokenizers behind one interface."""

from lmlab.tokenizers.base import (
    TOKENIZER_FILE,
    Tokenizer,
    load_tokenizer,
    register_tokenizer,
    tokenizer_from_json,
    tokenizer_to_json,
)
from lmlab.tokenizers.char import CharTokenizer
from lmlab.tokenizers.chat_template import render_chat_template
from lmlab.tokenizers.chess_pgn import ChessPGNTokenizer
from lmlab.tokenizers.hf import HFTokenizer
from lmlab.tokenizers.hf_pretrained import PretrainedHFTokenizer
from lmlab.tokenizers.pretrained import load_pretrained_tokenizer
from lmlab.tokenizers.sentencepiece_model import SentencePieceTokenizer
from lmlab.tokenizers.train import TOKENIZER_TRAINING_KINDS, train_tokenizer

__all__ = [
    "TOKENIZER_FILE",
    "CharTokenizer",
    "Tokenizer",
    "load_tokenizer",
    "register_tokenizer",
    "tokenizer_from_json",
    "tokenizer_to_json",
    "ChessPGNTokenizer",
    "HFTokenizer",
    "TOKENIZER_TRAINING_KINDS",
    "train_tokenizer",
    "PretrainedHFTokenizer",
    "SentencePieceTokenizer",
    "load_pretrained_tokenizer",
    "render_chat_template",
]
