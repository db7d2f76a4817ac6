"""BERT and RoBERTa (MLM head, classification head with pooler, bare model) parity."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from parity_helpers import TOL, max_diff, padded_batch  # noqa: E402

from lmlab.interop import load_hf  # noqa: E402
from lmlab.models import EncoderClassifier, EncoderMLM, EncoderModel  # noqa: E402

SETTINGS = dict(vocab_size=99, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=96, max_position_embeddings=64, pad_token_id=1)


def build(cls_name: str, config_cls: str, **overrides):
    torch.manual_seed(0)
    config = getattr(transformers, config_cls)(**{**SETTINGS, **overrides})
    model = getattr(transformers, cls_name)(config).eval()
    with torch.no_grad():  # make the token-type vector matter
        for name, param in model.named_parameters():
            if "token_type" in name or name.endswith("bias"):
                param.normal_(std=0.1)
    return model


CASES = [
    ("BertForMaskedLM", "BertConfig", EncoderMLM),
    ("BertForSequenceClassification", "BertConfig", EncoderClassifier),
    ("BertModel", "BertConfig", EncoderModel),
    ("RobertaForMaskedLM", "RobertaConfig", EncoderMLM),
    ("RobertaForSequenceClassification", "RobertaConfig", EncoderClassifier),
]


@pytest.mark.parametrize("cls_name,config_cls,ours_cls", CASES, ids=[c[0] for c in CASES])
def test_encoder_outputs_match(tmp_path, cls_name, config_cls, ours_cls):
    extra = {"num_labels": 3} if "Classification" in cls_name else {}
    if config_cls == "RobertaConfig":
        extra["max_position_embeddings"] = 66  # 64 positions after padding_idx + 1
    ref = build(cls_name, config_cls, **extra)
    ref.save_pretrained(tmp_path)
    loaded = load_hf(tmp_path)
    assert isinstance(loaded.model, ours_cls)
    ids, mask = padded_batch(99, [13, 4, 9])
    ids = ids.masked_fill(~mask, 1)  # RoBERTa's padding id
    with torch.no_grad():
        out = ref(input_ids=ids, attention_mask=mask.long())
        ours = loaded.model(ids, attention_mask=mask)
    if "Classification" in cls_name:
        assert ours.shape == (3, 3) and max_diff(ours, out.logits) <= TOL
    elif cls_name == "BertModel":
        assert max_diff(ours, out.last_hidden_state, mask) <= TOL
    else:
        assert max_diff(ours, out.logits, mask) <= TOL
