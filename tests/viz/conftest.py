"""Fixtures of the figure tests: a tiny random GPT-2 directory and a tiny sentence encoder."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for tiny_models

from tiny_models import gpt2_dir, sentence_encoder_dir  # noqa: E402


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    pytest.importorskip("transformers")
    return gpt2_dir(tmp_path_factory.mktemp("gpt2"))


@pytest.fixture(scope="session")
def tiny_sentence_encoder(tmp_path_factory) -> Path:
    pytest.importorskip("transformers")
    return sentence_encoder_dir(tmp_path_factory.mktemp("sentence-encoder"))
