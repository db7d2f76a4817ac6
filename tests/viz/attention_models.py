"""Tiny random Hugging Face models (GPT-2, BART) with a word-level tokenizer, for the attention
view tests; BERT and T5 come from ``tests/tiny_models.py``. All need ``transformers``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: tiny_models, browser

WORDS = ["<pad>", "<s>", "</s>", "<unk>"] + [f"w{i}" for i in range(28)]
HOSTILE = "<img src=x onerror=alert(1)>"  # a token text that must render as text


def _word_tokenizer(folder: Path, extra: tuple[str, ...] = ()) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = WORDS + list(extra)
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(WORDS[:4] + list(extra))
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))


def gpt2_dir(folder: Path) -> Path:
    """A two-layer, two-head GPT-2 (d_model 16) over ``w0`` … ``w27`` and a hostile token
    (:data:`HOSTILE`, one vocabulary entry)."""
    import torch
    import transformers

    _word_tokenizer(folder, (HOSTILE,))
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=len(WORDS) + 1, n_embd=16, n_layer=2, n_head=2, n_positions=64,
                                     bos_token_id=1, eos_token_id=2)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


def bart_dir(folder: Path) -> Path:
    """A BART with two encoder and two decoder layers of two heads (d_model 16)."""
    import torch
    import transformers

    _word_tokenizer(folder)
    torch.manual_seed(0)
    config = transformers.BartConfig(vocab_size=len(WORDS), d_model=16, encoder_layers=2, decoder_layers=2,
                                     encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                                     decoder_ffn_dim=32, max_position_embeddings=64, pad_token_id=0,
                                     bos_token_id=1, eos_token_id=2, decoder_start_token_id=2)
    transformers.BartForConditionalGeneration(config).save_pretrained(folder)
    return folder


def make_view(model_dir: Path, out: Path, *flags: str) -> dict:
    """Run ``lmlab attention model_dir --out out flags...`` and return the data the page embeds."""
    from lmlab.cli import main

    assert main(["attention", str(model_dir), "--out", str(out), *flags]) == 0
    return embedded_data(out)


def embedded_data(page: Path) -> dict:
    """The JSON inside the page's ``<script type="application/json" id="attention-data">``."""
    text = page.read_text(encoding="utf-8")
    start = text.index('id="attention-data">') + len('id="attention-data">')
    return json.loads(text[start:text.index("</script>", start)])


def gpt2_queries_keys(model_dir: Path, ids: list[int]) -> list[tuple]:
    """transformers' GPT-2 queries and keys per layer, float64 (H, T, D) each, read from ``c_attn``."""
    import torch
    import transformers

    model = transformers.GPT2LMHeadModel.from_pretrained(model_dir).eval()
    found = []

    def keep(module, inputs, output):
        B, T, three_c = output.shape
        H = model.config.n_head
        q, k, _ = output.double().split(three_c // 3, dim=-1)  # (B, T, C) each
        found.append(tuple(t.view(B, T, H, -1)[0].transpose(0, 1) for t in (q, k)))  # (H, T, D)

    hooks = [block.attn.c_attn.register_forward_hook(keep) for block in model.transformer.h]
    with torch.no_grad():
        model(torch.tensor([ids]))
    for hook in hooks:
        hook.remove()
    return found
