"""fill-mask equals transformers' fill-mask pipeline on a tiny random BERT and RoBERTa; an lmlab
MLM run (character tokenizer) fills its <mask>; mistakes are one-line errors with exit code 2."""

import json

import pytest
import torch
import transformers
from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as HFBackend

from lmlab.cli import main
from lmlab.errors import LmlabError
from lmlab.interop import load_pretrained
from lmlab.interop.fill_mask import fill_mask
from lmlab.models import ModelConfig, build_model
from lmlab.tokenizers import CharTokenizer, tokenizer_to_json
from lmlab.training.checkpoint import save_checkpoint
from lmlab.training.config import RunConfig

CORPUS = [
    "The world is everything that is the case.",
    "The world is the totality of facts, not of things.",
    "What is the case, the fact, is the existence of states of affairs.",
] * 4
WORDS = sorted({w for line in CORPUS for w in line.lower().replace(".", " .").replace(",", " ,").split()})
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def bert_dir(path):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "##s", "##ing"]
    backend = HFBackend(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    backend.decoder = decoders.WordPiece()
    backend.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]"
    )
    tokenizer.save_pretrained(path)
    config = transformers.BertConfig(vocab_size=len(vocab), max_position_embeddings=64, **TINY)
    torch.manual_seed(0)
    transformers.BertForMaskedLM(config).save_pretrained(path)
    return path


def roberta_dir(path):
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    backend = HFBackend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(CORPUS, trainer)
    backend.add_special_tokens([AddedToken("<mask>", lstrip=True, special=True)])  # RoBERTa's mask eats the space before it
    backend.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
        unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
    )
    tokenizer.save_pretrained(path)
    config = transformers.RobertaConfig(vocab_size=backend.get_vocab_size(), max_position_embeddings=66, pad_token_id=1, **TINY)
    torch.manual_seed(0)
    transformers.RobertaForMaskedLM(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module", params=["bert", "roberta"])
def hf_model(request, tmp_path_factory):
    make, mask = {"bert": (bert_dir, "[MASK]"), "roberta": (roberta_dir, "<mask>")}[request.param]
    return make(tmp_path_factory.mktemp(request.param)), mask


def pipeline_fillers(directory, text, top_k):
    """transformers' answer, always as one list of candidates per mask."""
    result = transformers.pipeline("fill-mask", model=str(directory), device="cpu")(text, top_k=top_k)
    return result if isinstance(result[0], list) else [result]


@pytest.mark.parametrize("template", ["The world is everything that is the {m}.", "The {m} is everything that is the {m}."])
def test_equal_to_the_transformers_pipeline(hf_model, template):
    directory, mask = hf_model
    text = template.format(m=mask)
    loaded = load_pretrained(directory)
    got = fill_mask(loaded.model, loaded.tokenizer, text, top_k=5)
    expected = pipeline_fillers(directory, text, top_k=5)
    assert len(got) == len(expected) == text.count(mask)
    for ours, theirs in zip(got, expected):
        assert [(f.token, f.token_str, f.sequence) for f in ours] == [(e["token"], e["token_str"], e["sequence"]) for e in theirs]
        assert [f.score for f in ours] == pytest.approx([e["score"] for e in theirs], abs=1e-6)


def test_the_cli_prints_the_pipeline_fillers(hf_model, capsys):
    directory, mask = hf_model
    text = f"The world is the {mask} of facts."
    assert main(["fill-mask", str(directory), text, "--top-k", "3"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expected = pipeline_fillers(directory, text, top_k=3)[0]
    assert [(r["mask"], r["id"], r["token"], r["sequence"]) for r in rows] == [
        (0, e["token"], e["token_str"], e["sequence"]) for e in expected
    ]
    assert [r["score"] for r in rows] == pytest.approx([e["score"] for e in expected], abs=1e-6)


def test_a_text_without_the_models_mask_says_how_it_is_spelt(hf_model, capsys):
    directory, mask = hf_model
    other = "<mask>" if mask == "[MASK]" else "[MASK]"
    assert main(["fill-mask", str(directory), f"The world is the {other}."]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"lmlab: error: the text has no mask token; this model spells it {mask}"


@pytest.fixture
def mlm_run(tmp_path):
    """An lmlab MLM run: a character tokenizer with <mask>, a random EncoderMLM, one checkpoint."""
    tokenizer = CharTokenizer.from_text("".join(CORPUS), special_tokens={"pad": "<pad>", "mask": "<mask>"})
    config = ModelConfig(backbone="encoder", vocab_size=tokenizer.vocab_size, n_layer=1, n_head=2, d_model=16, context_length=64)
    torch.manual_seed(0)
    model = build_model(config).eval()
    state = {"config": RunConfig(model=config).to_dict(), "tokenizer": tokenizer_to_json(tokenizer)}
    save_checkpoint(tmp_path / "run", 1, model, None, state)
    return tmp_path / "run", model, tokenizer


def test_an_lmlab_mlm_run(mlm_run, capsys):
    run_dir, model, tokenizer = mlm_run
    assert main(["fill-mask", str(run_dir), "the world is <mask>he case", "--top-k", "4"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    mask_id = tokenizer.special_tokens["mask"]
    ids = tokenizer.encode("the world is ") + [mask_id] + tokenizer.encode("he case")
    with torch.no_grad():
        probs = model(torch.tensor([ids]))[0, ids.index(mask_id)].softmax(-1)  # (V,)
    top = probs.topk(4)
    assert [r["id"] for r in rows] == top.indices.tolist()
    assert [r["score"] for r in rows] == pytest.approx(top.values.tolist(), abs=1e-6)
    assert [r["sequence"] for r in rows] == [f"the world is {tokenizer.decode([t])}he case" for t in top.indices.tolist()]


def test_bad_calls_are_one_line_errors(mlm_run):
    _, model, tokenizer = mlm_run
    with pytest.raises(LmlabError, match="--top-k must be a positive integer"):
        fill_mask(model, tokenizer, "a <mask>", top_k=0)
    decoder = build_model(ModelConfig(vocab_size=tokenizer.vocab_size, n_layer=1, n_head=2, d_model=16, context_length=8))
    with pytest.raises(LmlabError, match="needs a masked-LM encoder .* not a DecoderLM"):
        fill_mask(decoder, tokenizer, "a <mask>")
    with pytest.raises(LmlabError, match="has no mask token; fill-mask needs a masked-LM model"):
        fill_mask(model, CharTokenizer.from_text("abc"), "a")
    with pytest.raises(LmlabError, match="more than the model's 64"):
        fill_mask(model, tokenizer, "the case " * 10 + "<mask>")
