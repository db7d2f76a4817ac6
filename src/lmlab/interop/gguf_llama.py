"""GGUF files of the Llama architecture → lmlab decoder (RoPE, RMSNorm, SwiGLU, GQA).

The model is built from the ``llama.*`` metadata, the tensors are dequantised to float32 one at a
time (F32, F16, Q8_0, Q4_K, ... — whatever :class:`~lmlab.interop.GGUFFile` reads), llama.cpp's
Q/K row permutation is undone, and the tokenizer and chat template come from the metadata.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from lmlab.errors import LmlabError
from lmlab.interop.gguf_file import GGUFFile, unpermute_qk
from lmlab.interop.llama import layer_rules
from lmlab.interop.mapping import RuleMap, fill_tensors
from lmlab.interop.weights import load_into
from lmlab.models import ModelConfig, build_model

SUPPORTED_ARCHITECTURES = ("llama",)
MAX_CONTEXT = 1 << 17


def model_config(gguf: GGUFFile) -> ModelConfig:
    """The lmlab config of a Llama GGUF file's metadata."""
    if gguf.architecture not in SUPPORTED_ARCHITECTURES:
        raise LmlabError(
            f"{gguf.path.name} has architecture {gguf.architecture!r}; lmlab reads GGUF files of "
            f"these architectures: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    meta = gguf.metadata
    arch = gguf.architecture
    n_head = int(gguf.arch_value("attention.head_count"))
    d_model = int(gguf.arch_value("embedding_length"))
    vocab = meta.get(f"{arch}.vocab_size") or gguf.info("token_embd.weight").shape[0]
    if f"{arch}.rope.scaling.type" in meta and meta[f"{arch}.rope.scaling.type"] not in ("none",):
        raise LmlabError(f"{gguf.path.name}: RoPE scaling is not supported by lmlab (only plain RoPE)")
    if "rope_freqs.weight" in gguf.names():
        raise LmlabError(f"{gguf.path.name}: rope_freqs (Llama 3.1 RoPE scaling) is not supported by lmlab")
    return ModelConfig(
        backbone="decoder",
        vocab_size=int(vocab),
        n_layer=int(gguf.arch_value("block_count")),
        n_head=n_head,
        n_kv_heads=int(meta.get(f"{arch}.attention.head_count_kv", n_head)),
        d_model=d_model,
        d_ff=int(gguf.arch_value("feed_forward_length")),
        context_length=min(int(meta.get(f"{arch}.context_length", 2048)), MAX_CONTEXT),
        dropout=0.0,
        bias=False,
        position="rope",
        rope_base=float(meta.get(f"{arch}.rope.freq_base", 10000.0)),
        norm="rmsnorm",
        norm_placement="pre",
        norm_eps=float(meta.get(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        ffn="swiglu",
        tie_embeddings="output.weight" not in gguf.names(),
    )


def name_map(config: ModelConfig) -> RuleMap:
    """GGUF Llama tensor names → lmlab names (Q and K unpermuted)."""
    w = r"\.(weight|bias)"
    rules = layer_rules(
        config, r"blk\.(\d+)\.", r"token_embd\.weight", r"output_norm\.weight",
        r"attn_q" + w, r"attn_k" + w, r"attn_v" + w, r"attn_output" + w,
        r"ffn_gate" + w, r"ffn_up" + w, r"ffn_down" + w,
        r"attn_norm\.weight", r"ffn_norm\.weight", r"output\.weight",
        q_transform=partial(unpermute_qk, n_head=config.n_head),
        k_transform=partial(unpermute_qk, n_head=config.n_kv_heads or config.n_head),
    )
    return RuleMap(rules)


def load_gguf(path: str | Path):
    """A Llama GGUF file as a :class:`~lmlab.interop.LoadedPretrained` (eval mode)."""
    from lmlab.interop.pretrained import LoadedPretrained

    gguf = GGUFFile(path)
    config = model_config(gguf)
    model = build_model(config)
    load_into(fill_tensors(model), gguf, name_map(config))
    model.eval()
    tokenizer = gguf.tokenizer() if "tokenizer.ggml.tokens" in gguf.metadata else None
    return LoadedPretrained(model, tokenizer, config, f"gguf-{gguf.architecture}", Path(path),
                            {"chat_template": gguf.chat_template})
