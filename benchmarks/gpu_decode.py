"""Batch-1 greedy decoding speed: lmlab's generate against transformers' static-cache generate.

    python benchmarks/gpu_decode.py                            # gpt2-124m, then llama-1b; bf16 on CUDA
    python benchmarks/gpu_decode.py --model llama-1b --new-tokens 256
    python benchmarks/gpu_decode.py --model tiny,tiny-llama --device cpu --new-tokens 8   # the tests' smoke run

Models are random, built by transformers (seeded) and loaded into lmlab through
``lmlab.interop.load_hf``, so both sides hold the same weights: ``gpt2-124m`` (12 layers, 768
dims, 12 heads, vocab 50257), ``llama-1b`` (TinyLlama's shape: 22 layers, 2048 dims, 32 heads, 4
key/value heads, feed-forward 5632, vocab 32000; 1.1B parameters), and the tiny ``tiny`` (GPT-2)
and ``tiny-llama`` for smoke tests. Weights are bfloat16 on CUDA, float32 on the CPU
(``--dtype`` overrides).

lmlab runs :func:`lmlab.generation.generate` as it is (greedy, its defaults). transformers runs
``generate`` with ``cache_implementation="static"``, greedy, with its decode step compiled by
``torch.compile(mode="reduce-overhead")`` (CUDA graphs) on CUDA through its ``compile_config``,
and plain on the CPU. Both continue the same random prompt by exactly ``--new-tokens`` tokens (no
EOS). Each side is warmed up first (compilation, graph capture: ``warmup_s``), then the two run
``--repeats`` times alternately, the best run counting. JSON lines, per model: the setup, then
per side ``tokens_per_s`` and ``bandwidth_share`` (weight bytes × tokens/s over the GPU's peak
memory bandwidth from a datasheet table; null on the CPU and for a GPU not in the table), then
``ratio`` (lmlab tokens/s over transformers'), ``tokens_identical`` and the tokens.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch
from torch import nn

from lmlab.errors import LmlabError
from lmlab.generation import GenerationConfig, generate
from lmlab.interop import load_hf
from lmlab.training.devices import resolve_device

# Peak memory bandwidth (bytes/s, datasheet) by torch.cuda.get_device_name() substring; the first
# match wins, so the more specific names come first ("L40S" before "L4", "H100 PCIe" before "H100").
GPU_BANDWIDTH: tuple[tuple[str, float], ...] = (
    ("H200", 4.8e12),
    ("H100 PCIe", 2.0e12),
    ("H100 NVL", 3.9e12),
    ("H100", 3.35e12),  # SXM
    ("A100-SXM4-80GB", 2.039e12),
    ("A100 80GB PCIe", 1.935e12),
    ("A100", 1.555e12),  # 40GB, SXM and PCIe
    ("L40S", 864e9),
    ("L40", 864e9),
    ("L4", 300e9),
    ("RTX 4090", 1.008e12),
)
MODELS = {
    "gpt2-124m": ("gpt2", dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50257, n_positions=1024)),
    "llama-1b": ("llama", dict(num_hidden_layers=22, hidden_size=2048, num_attention_heads=32,
                               num_key_value_heads=4, intermediate_size=5632, vocab_size=32000,
                               max_position_embeddings=2048, tie_word_embeddings=False)),
    "tiny": ("gpt2", dict(n_layer=2, n_head=4, n_embd=64, vocab_size=512, n_positions=256,
                          initializer_range=0.2)),  # wide enough that greedy tokens vary
    "tiny-llama": ("llama", dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                 intermediate_size=128, vocab_size=512, max_position_embeddings=256,
                                 tie_word_embeddings=False)),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=model_names, default="gpt2-124m,llama-1b",
                        help=f"one or more of {', '.join(MODELS)}, comma-separated (default: gpt2-124m,llama-1b)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    parser.add_argument("--dtype", choices=tuple(DTYPES), help="weights (default: bfloat16 on CUDA, float32 on the CPU)")
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side (the best counts)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if min(args.prompt_tokens, args.new_tokens, args.repeats) < 1:
        parser.error("--prompt-tokens, --new-tokens and --repeats must be at least 1")
    return args


def random_reference(name: str, device: torch.device, dtype: torch.dtype, seed: int) -> nn.Module:
    """transformers' random model ``name``, built on ``device`` (seeded) in ``dtype``, eval mode."""
    import transformers

    family, fields = MODELS[name]
    if family == "gpt2":
        config = transformers.GPT2Config(**fields, bos_token_id=None, eos_token_id=None)
        model_class = transformers.GPT2LMHeadModel
    else:
        config = transformers.LlamaConfig(**fields, bos_token_id=None, eos_token_id=None)
        model_class = transformers.LlamaForCausalLM
    torch.manual_seed(seed)
    with device:
        model = model_class(config)
    return model.to(dtype).eval()


def lmlab_copy(reference: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """The same weights as an lmlab model, through a saved Hugging Face directory."""
    with tempfile.TemporaryDirectory() as folder:
        reference.save_pretrained(folder)
        model = load_hf(folder).model
    return model.to(device, dtype).eval()


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's distinct parameters (a tied embedding counts once)."""
    distinct = {p.data_ptr(): p.numel() * p.element_size() for p in model.parameters()}
    return sum(distinct.values())


def peak_bandwidth(device: torch.device) -> tuple[float | None, str]:
    """The GPU's datasheet memory bandwidth (bytes/s) and its name; None off CUDA or off the table."""
    if device.type != "cuda":
        return None, device.type
    name = torch.cuda.get_device_name(device)
    return next((bandwidth for key, bandwidth in GPU_BANDWIDTH if key in name), None), name


def transformers_settings(reference: nn.Module, device: torch.device) -> dict:
    """generate() keywords: the static cache, and the decode step compiled with CUDA graphs on CUDA."""
    import transformers

    settings = {"cache_implementation": "static"}
    if device.type != "cuda":  # plain; transformers compiles on its own only on accelerators, where it can
        return {**settings, "disable_compile": True} if hasattr(transformers.GenerationConfig(), "disable_compile") \
            else settings
    if hasattr(transformers, "CompileConfig"):
        return {**settings, "compile_config": transformers.CompileConfig(mode="reduce-overhead")}
    reference.forward = torch.compile(reference.forward, mode="reduce-overhead", fullgraph=True)  # older transformers
    return settings


def run_transformers(reference: nn.Module, prompt: list[int], new_tokens: int, settings: dict) -> list[int]:
    device = next(reference.parameters()).device
    ids = torch.tensor([prompt], device=device)  # (1, P)
    with torch.inference_mode():
        out = reference.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, do_sample=False, pad_token_id=0, eos_token_id=None,
                                 **settings)  # (1, P + new_tokens)
    return out[0, len(prompt):].tolist()


def run_lmlab(model: nn.Module, prompt: list[int], new_tokens: int) -> list[int]:
    return generate(model, prompt, GenerationConfig(max_new_tokens=new_tokens, strategy="greedy"))


def timed(run, device: torch.device) -> tuple[float, list[int]]:
    """(seconds, tokens) of one call, the device synchronised around it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    tokens = run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, tokens


def model_names(text: str) -> list[str]:
    """``--model``: one name of :data:`MODELS` or several, comma-separated."""
    names = [name.strip() for name in text.split(",")]
    unknown = [name for name in names if name not in MODELS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown model {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    return names


def benchmark(name: str, args: argparse.Namespace) -> None:
    """The JSON lines of one model: setup, one row per side, the ratio and the tokens."""
    device = resolve_device(args.device)
    dtype = DTYPES[args.dtype or ("bfloat16" if device.type == "cuda" else "float32")]
    reference = random_reference(name, device, dtype, args.seed)
    ours = lmlab_copy(reference, device, dtype)
    settings = transformers_settings(reference, device)
    vocab = reference.config.vocab_size
    prompt = torch.randint(0, vocab, (args.prompt_tokens,), generator=torch.Generator().manual_seed(args.seed)).tolist()
    sides = {"lmlab": lambda: run_lmlab(ours, prompt, args.new_tokens),
             "transformers": lambda: run_transformers(reference, prompt, args.new_tokens, settings)}
    nbytes = weight_bytes(ours)
    bandwidth, device_name = peak_bandwidth(device)
    print(json.dumps({"setup": name, "device": device_name, "dtype": str(dtype).removeprefix("torch."),
                      "parameters": sum(p.numel() for p in ours.parameters()), "weight_bytes": nbytes,
                      "peak_bandwidth": bandwidth, "prompt_tokens": args.prompt_tokens,
                      "new_tokens": args.new_tokens, "transformers_compiled": device.type == "cuda",
                      "torch": torch.__version__, "threads": torch.get_num_threads()}), flush=True)
    warmup_s = {}
    for side, run in sides.items():  # compilation and CUDA-graph capture: two runs of the timed shape
        warmup_s[side] = sum(timed(run, device)[0] for _ in range(2))
    best, tokens = {side: float("inf") for side in sides}, {}
    for _ in range(args.repeats):  # alternating, so a busy machine slows both alike
        for side, run in sides.items():
            seconds, tokens[side] = timed(run, device)
            best[side] = min(best[side], seconds)
    rates = {side: args.new_tokens / best[side] for side in sides}
    for side in sides:
        share = nbytes * rates[side] / bandwidth if bandwidth else None
        print(json.dumps({"model": name, "side": side, "tokens_per_s": round(rates[side], 2),
                          "warmup_s": round(warmup_s[side], 2),
                          "bandwidth_share": round(share, 4) if share is not None else None}), flush=True)
    print(json.dumps({"model": name, "ratio": round(rates["lmlab"] / rates["transformers"], 3),
                      "tokens_identical": tokens["lmlab"] == tokens["transformers"],
                      "lmlab_tokens": tokens["lmlab"], "transformers_tokens": tokens["transformers"]}), flush=True)


def main() -> None:
    args = parse_args()
    try:
        for name in args.model:
            benchmark(name, args)
    except LmlabError as exc:  # an unavailable --device
        raise SystemExit(f"gpu_decode.py: {exc}") from None


if __name__ == "__main__":
    main()
