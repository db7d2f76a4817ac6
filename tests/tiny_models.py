"""Tiny Hugging Face model directories for tests that run the ``lmlab`` command on them: a Llama
chat model (word-level tokenizer and chat template), a BERT sentence encoder in the
sentence-transformers layout, masked-LM BERT and RoBERTa models and a T5. All need ``transformers``."""

from __future__ import annotations

import json
from pathlib import Path

CHAT_WORDS = ["</s>", "<s>", "<unk>", "<|user|>", "<|assistant|>"] + [f"w{i}" for i in range(11)]
ENCODER_WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(45)]


def chat_model_dir(folder: Path) -> Path:
    """A one-layer Llama in ``folder`` with a word-level tokenizer (``w0`` … ``w10``) and a chat template."""
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=len(CHAT_WORDS), hidden_size=16, intermediate_size=32,
                                      num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=64)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(CHAT_WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(CHAT_WORDS[:5])
    tok.save(str(folder / "tokenizer.json"))
    template = "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}<|assistant|>"
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": template, "eos_token": "</s>", "bos_token": "<s>", "unk_token": "<unk>"}))
    return folder


def sentence_encoder_dir(folder: Path) -> Path:
    """A two-layer BERT in ``folder`` in the sentence-transformers layout (mean pooling, normalised)."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(ENCODER_WORDS), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)
    transformers.BertModel(config).save_pretrained(folder)
    (folder / "vocab.txt").write_text("\n".join(ENCODER_WORDS) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "tokenizer_class": "BertTokenizer"}))
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir()
    (folder / "2_Normalize").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": 32, "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False}))
    return folder


# Words of the README's fine-tuning and fill-mask examples, so the tiny BERT and T5 know them.
TASK_WORDS = sorted(set(
    "the world is everything that is the case . , a fine film great dull play good bad long article summary "
    "of facts not things what fact existence states affairs totality short text story".split()))


def bert_mlm_dir(folder: Path) -> Path:
    """A two-layer ``BertForMaskedLM`` in ``folder`` with a lower-casing WordPiece ``tokenizer.json``
    (``[CLS] … [SEP]``, ``[MASK]``) over :data:`TASK_WORDS`; it also fine-tunes as a classifier."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *TASK_WORDS, "##s", "##ing"]
    backend = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    backend.decoder = decoders.WordPiece()
    backend.add_special_tokens(vocab[:5])
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]",
        mask_token="[MASK]").save_pretrained(folder)
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=64)
    transformers.BertForMaskedLM(config).save_pretrained(folder)
    return folder


def roberta_mlm_dir(folder: Path) -> Path:
    """A two-layer ``RobertaForMaskedLM`` in ``folder`` with a byte-level BPE trained on :data:`TASK_WORDS`
    (``<mask>`` takes the space before it, as RoBERTa's does)."""
    import torch
    import transformers
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator([" ".join(TASK_WORDS)] * 4, trainer)
    backend.add_special_tokens([AddedToken("<mask>", lstrip=True, special=True)])
    backend.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
        unk_token="<unk>", pad_token="<pad>", mask_token="<mask>").save_pretrained(folder)
    torch.manual_seed(0)
    config = transformers.RobertaConfig(vocab_size=backend.get_vocab_size(), max_position_embeddings=66, pad_token_id=1,
                                        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    transformers.RobertaForMaskedLM(config).save_pretrained(folder)
    return folder


def t5_dir(folder: Path) -> Path:
    """A one-layer ``T5ForConditionalGeneration`` in ``folder`` with a word-level ``tokenizer.json``
    over :data:`TASK_WORDS` (``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, as T5's)."""
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<pad>", "</s>", "<unk>", *TASK_WORDS, "summarize:"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(words[:3])
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}))
    torch.manual_seed(0)
    config = transformers.T5Config(vocab_size=len(words), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                                   relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
                                   decoder_start_token_id=0)
    transformers.T5ForConditionalGeneration(config).save_pretrained(folder)
    return folder


GPT2_WORDS = ["<pad>", "<s>", "</s>", "<unk>"] + [f"w{i}" for i in range(60)]


def gpt2_dir(folder: Path) -> Path:
    """A one-layer GPT-2 in ``folder`` (d_model 32) with a word-level tokenizer (``w0`` … ``w59``)."""
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=len(GPT2_WORDS), n_positions=64,
                                     bos_token_id=1, eos_token_id=2)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(GPT2_WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(folder / "tokenizer.json"))
    return folder
