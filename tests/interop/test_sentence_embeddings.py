"""A bare BertModel in the sentence-transformers layout → `lmlab embed` gives the mean-pooled (and
normalised) transformers hidden states; cls/max pooling and the similarity matrix."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

from lmlab.cli import main  # noqa: E402
from lmlab.interop.embeddings import load_sentence_encoder  # noqa: E402

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(45)]
TEXTS = ["w1 w2 w3", "w4 w5", "w6 w7 w8 w9 w10 w11"]


def st_dir(tmp_path, pooling: str = "mean", normalize: bool = True):
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(WORDS), hidden_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=96, max_position_embeddings=64)
    model = transformers.BertModel(config).eval()
    folder = tmp_path / "st"
    model.save_pretrained(folder)
    (folder / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "tokenizer_class": "BertTokenizer"}))
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (folder / "2_Normalize").mkdir()
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": 64, "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": pooling == "max"}))
    return folder, model


def reference(model, folder, pooling, normalize):
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].bool()
    if pooling == "mean":
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    elif pooling == "cls":
        pooled = hidden[:, 0]
    else:
        pooled = hidden.masked_fill(~mask[..., None], -1e9).amax(1)
    return F.normalize(pooled, dim=-1) if normalize else pooled


def test_embed_cli_matches_mean_pooled_normalised_hidden_states(tmp_path, capsys):
    folder, model = st_dir(tmp_path)
    expected = reference(model, folder, "mean", True)
    args = ["embed", str(folder)] + [a for t in TEXTS for a in ("--text", t)]
    assert main(args) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["text"] for line in lines] == TEXTS
    ours = torch.tensor([line["embedding"] for line in lines])
    assert (ours - expected).abs().max() <= 1e-4
    assert main(args + ["--similarity"]) == 0
    sim = torch.tensor(json.loads(capsys.readouterr().out)["similarity"])
    assert (sim - expected @ expected.T).abs().max() <= 1e-4


@pytest.mark.parametrize("pooling", ["cls", "max"])
def test_other_poolings_without_normalize(tmp_path, pooling):
    folder, model = st_dir(tmp_path, pooling, normalize=False)
    ours = load_sentence_encoder(folder).encode(TEXTS)
    assert (ours - reference(model, folder, pooling, False)).abs().max() <= 1e-4


def test_embed_of_a_masked_lm_directory_pools_the_encoder_hidden_states(tmp_path, capsys):
    """A plain BertForMaskedLM directory embeds as sentence-transformers embeds a plain BERT: the
    mean of BertModel's last hidden states (dimension hidden_size), not of the vocabulary logits."""
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=48, max_position_embeddings=64)
    folder = tmp_path / "mlm"
    transformers.BertForMaskedLM(config).eval().save_pretrained(folder)
    (folder / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "tokenizer_class": "BertTokenizer"}))
    bare = transformers.BertModel.from_pretrained(folder, add_pooling_layer=False).eval()
    expected = reference(bare, folder, "mean", False)
    assert main(["embed", str(folder)] + [a for t in TEXTS for a in ("--text", t)]) == 0
    ours = torch.tensor([json.loads(line)["embedding"] for line in capsys.readouterr().out.splitlines()])
    assert ours.shape == (len(TEXTS), config.hidden_size)
    assert (ours - expected).abs().max() <= 1e-4
