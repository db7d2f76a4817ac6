"""A sentence-transformers export whose tokenizer.json enables padding and truncation (issue 12,
item 8): `lmlab embed` pads the batch itself, with an attention mask, and matches transformers."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from tokenizers import Tokenizer as HFBackend  # noqa: E402
from tokenizers import models, normalizers, pre_tokenizers, processors  # noqa: E402
from test_sentence_embeddings import TEXTS, WORDS, reference, st_dir  # noqa: E402

from lmlab.interop.embeddings import load_sentence_encoder  # noqa: E402


def padded_tokenizer_json(folder) -> None:
    """The directory's WordPiece as a tokenizer.json padding to 32 ids and truncating at 32."""
    vocab = {word: index for index, word in enumerate(WORDS)}
    backend = HFBackend(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    backend.enable_padding(pad_id=vocab["[PAD]"], pad_token="[PAD]", length=32)
    backend.enable_truncation(max_length=32)
    backend.save(str(folder / "tokenizer.json"))


def test_embeddings_ignore_the_padding_stored_in_tokenizer_json(tmp_path):
    folder, model = st_dir(tmp_path)
    padded_tokenizer_json(folder)
    encoder = load_sentence_encoder(folder)
    assert encoder.tokenizer.encode(TEXTS[1], add_special_tokens=True) == [2, 9, 10, 3]
    expected = reference(model, folder, "mean", True)
    assert (encoder.encode(TEXTS) - expected).abs().max() <= 1e-4
    assert torch.allclose(encoder.encode(TEXTS[:1]), expected[:1], atol=1e-4)
