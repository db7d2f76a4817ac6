"""lmlab models → Hugging Face directories that transformers loads with the same logits (GPT-2 and
Llama formats), a character tokenizer as tokenizer.json, and a clear error for models with no
Hugging Face equivalent."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from parity_helpers import TOL, max_diff, padded_batch, perturbed  # noqa: E402

from lmlab.errors import LmlabError  # noqa: E402
from lmlab.interop import export_hf, load_hf  # noqa: E402
from lmlab.models import ModelConfig, build_model  # noqa: E402
from lmlab.tokenizers import CharTokenizer  # noqa: E402

TOKENIZER = CharTokenizer.from_text("hello world\nthe quick brown fox", unk=True, special_tokens={"eos": "</s>"})
BASE = dict(vocab_size=TOKENIZER.vocab_size, n_layer=2, n_head=4, d_model=64, context_length=32)


@pytest.mark.parametrize("overrides,kind", [
    ({}, "gpt2"),
    ({"ffn": "gelu-tanh", "tie_embeddings": False}, "gpt2"),
    ({"position": "rope", "norm": "rmsnorm", "ffn": "swiglu", "bias": False, "n_kv_heads": 2,
      "rope_base": 500.0, "tie_embeddings": False, "d_ff": 96}, "llama"),
    ({"position": "rope", "norm": "rmsnorm", "ffn": "swiglu", "bias": False}, "llama"),
], ids=["gpt2-default", "gpt2-untied", "llama-gqa", "llama-tied"])
def test_export_loads_in_transformers_with_same_logits(tmp_path, overrides, kind):
    torch.manual_seed(0)
    config = ModelConfig(**{**BASE, **overrides})
    model = perturbed(build_model(config))
    summary = export_hf(model, config, TOKENIZER, tmp_path)
    assert summary["format"] == kind
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids, mask = padded_batch(config.vocab_size, [16, 9, 12], low=0)
    with torch.no_grad():
        ours = model(ids, attention_mask=mask)
        theirs = ref(ids, attention_mask=mask.long()).logits
    assert max_diff(ours, theirs, mask) <= TOL
    back = load_hf(tmp_path)  # and lmlab reads its own export
    with torch.no_grad():
        assert max_diff(back.model(ids, attention_mask=mask), ours, mask) <= TOL


def test_char_tokenizer_exports_as_tokenizer_json(tmp_path):
    config = ModelConfig(**BASE)
    export_hf(build_model(config), config, TOKENIZER, tmp_path)
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    text = "the fox\nhello</s>"
    assert hf_tok(text)["input_ids"] == TOKENIZER.encode("the fox\nhello") + [TOKENIZER.special_tokens["eos"]]
    assert hf_tok.decode(TOKENIZER.encode("quick brown")) == "quick brown"
    assert hf_tok("zz")["input_ids"] == [TOKENIZER.special_tokens["unk"]] * 2
    assert hf_tok.eos_token == "</s>"


def test_models_without_hf_equivalent_are_refused(tmp_path):
    config = ModelConfig(**BASE, position="alibi")
    with pytest.raises(LmlabError, match="cannot export this model"):
        export_hf(build_model(config), config, None, tmp_path)


@pytest.mark.parametrize("head,cls_name", [("lm", "BertForMaskedLM"), ("none", "BertModel")])
def test_encoder_exports_as_bert(tmp_path, head, cls_name):
    torch.manual_seed(0)
    config = ModelConfig(**BASE, backbone="encoder", head=head, norm_placement="post", norm_eps=1e-12)
    model = perturbed(build_model(config))
    assert export_hf(model, config, TOKENIZER, tmp_path)["format"] == "bert"
    ref = getattr(transformers, cls_name).from_pretrained(tmp_path).eval()
    ids, mask = padded_batch(config.vocab_size, [16, 9, 12], low=0)
    with torch.no_grad():
        out = ref(input_ids=ids, attention_mask=mask.long())
        theirs = out.logits if head == "lm" else out.last_hidden_state
        assert max_diff(model(ids, attention_mask=mask), theirs, mask) <= TOL
