"""Generation speed: lmlab vs transformers' generate() on the same random GPT-2-small (124M).

The model is a random GPT-2 (12 layers, 12 heads, 768 dims, vocab 50257) built by transformers,
saved, and loaded into lmlab through ``lmlab.interop.load_hf`` — the same weights in both. Every
run generates exactly the asked number of tokens (no EOS). One JSON object per line:

    {"case": "greedy-b1", "dtype": "float32", "device": "cpu", "lmlab_tokens_per_s": ...,
     "transformers_tokens_per_s": ..., "ratio": ..., "floor_tokens_per_s": ..., "lmlab_fraction_of_floor": ...}

Cases: greedy-b1 (batch 1, 16-token prompt, 128 new tokens), sample-b1 (top-k 50, top-p 0.9,
temperature 0.8), beam4-b1 (4 beams, 64 new tokens; "tokens" are decoding steps), greedy-b8
(batch 8). lmlab runs with its defaults: at batch 1 that is speculative decoding with an int8
draft (the same tokens); the ``-plain`` rows turn it off (``draft_tokens=0``). The floor is what
memory bandwidth allows when every token reads all float32 weights once: floor = batch ×
bandwidth / weight bytes (bandwidth: the best of a large sum and an LM-head-sized matrix-vector
product, measured here, or ``--bandwidth-gbps``). A fraction above 1 means fewer float32 passes
than tokens (speculative decoding), or a bandwidth measurement that came out low on a busy
machine. The setup line says whether lmlab's native kernel was built (``LMLAB_NATIVE_KERNELS=0``
turns it off). Then
lmlab's tokens/s at 64, 256 and 1024 new tokens against a loop without a cache, to show linear
rather than quadratic cost (the uncached loop only up to ``--nocache-max``, it is quadratic).
``--dtype bfloat16`` (or ``both``) adds bfloat16 rows; ``--device cuda`` runs on a GPU.

    python benchmarks/generate_vs_transformers.py [--quick] [--dtype float32|bfloat16|both] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from lmlab.generation import GenerationConfig, generate_batch
from lmlab.interop import load_hf
from lmlab.kernels import native_status

PROMPT_LEN = 16


def build_models(n_positions: int, quick: bool):
    import transformers

    torch.manual_seed(0)
    if quick:  # a smaller model for a smoke test of the script itself
        config = transformers.GPT2Config(n_layer=2, n_head=4, n_embd=128, vocab_size=1000, n_positions=n_positions)
    else:
        config = transformers.GPT2Config(n_layer=12, n_head=12, n_embd=768, vocab_size=50257, n_positions=n_positions)
    ref = transformers.GPT2LMHeadModel(config).eval()
    with tempfile.TemporaryDirectory() as folder:
        ref.save_pretrained(folder)
        ours = load_hf(folder).model.eval()
    return ref, ours


def weight_bytes(model: torch.nn.Module) -> int:
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
    return total


def bandwidth(device: str) -> float:
    """Read bandwidth in bytes/s: the best of a plain sum over 512 MiB and a matrix-vector product
    with a 154 MB (LM-head-sized) matrix, each the best of several runs."""
    src = torch.ones(128 * 2**20, dtype=torch.float32, device=device)
    weight = torch.randn(50257, 768, device=device)
    x = torch.randn(1, 768, device=device)
    best_sum = best_mv = float("inf")
    for _ in range(20):
        best_sum = min(best_sum, timed(lambda: src.sum(), device, 1))
        best_mv = min(best_mv, timed(lambda: torch.nn.functional.linear(x, weight), device, 1))
    return max(src.numel() * 4 / best_sum, weight.numel() * 4 / best_mv)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def prompts(batch: int, vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, PROMPT_LEN), generator=torch.Generator().manual_seed(batch))


def run_lmlab(model, ids: torch.Tensor, config: GenerationConfig):
    return generate_batch(model, ids.tolist(), config)


def run_transformers(model, ids: torch.Tensor, settings: dict, n: int):
    with torch.inference_mode():
        return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                              min_new_tokens=n, pad_token_id=0, eos_token_id=None, **settings)


SAMPLING = dict(top_k=50, top_p=0.9, temperature=0.8)
CASES = [
    # name, batch, new tokens, lmlab settings, transformers settings
    ("greedy-b1", 1, 128, dict(strategy="greedy"), dict(do_sample=False)),
    ("greedy-b1-plain", 1, 128, dict(strategy="greedy", draft_tokens=0), dict(do_sample=False)),
    ("sample-b1", 1, 128, dict(strategy="sample", seed=0, **SAMPLING), dict(do_sample=True, **SAMPLING)),
    ("sample-b1-plain", 1, 128, dict(strategy="sample", seed=0, draft_tokens=0, **SAMPLING),
     dict(do_sample=True, **SAMPLING)),
    ("beam4-b1", 1, 64, dict(strategy="beam", num_beams=4), dict(do_sample=False, num_beams=4, early_stopping=False)),
    ("greedy-b8", 8, 128, dict(strategy="greedy"), dict(do_sample=False)),
]


def compare(ref, ours, dtype: torch.dtype, device: str, repeats: int, quick: bool, bw: float, cases: set[str]) -> None:
    vocab = ours.config.vocab_size
    nbytes = weight_bytes(ours)
    for name, batch, n, our_settings, their_settings in CASES:
        if name not in cases:
            continue
        if quick:
            n = min(n, 16)
        ids = prompts(batch, vocab).to(device)
        config = GenerationConfig(max_new_tokens=n, **our_settings)
        per_run = n * (1 if name.startswith("beam") else batch)  # beam search: decoding steps
        run_lmlab(ours, ids[:, :4], GenerationConfig(max_new_tokens=2, **our_settings))  # warm up
        run_transformers(ref, ids[:, :4], their_settings, 2)
        t_ours = t_theirs = float("inf")
        for _ in range(repeats):  # interleaved, so a busy machine slows both alike
            t_ours = min(t_ours, timed(lambda: run_lmlab(ours, ids, config), device, 1))
            t_theirs = min(t_theirs, timed(lambda: run_transformers(ref, ids, their_settings, n), device, 1))
        floor = bw / nbytes * (1 if name.startswith("beam") else batch)
        print(json.dumps({
            "case": name, "dtype": str(dtype).removeprefix("torch."), "device": device,
            "lmlab_tokens_per_s": round(per_run / t_ours, 2), "transformers_tokens_per_s": round(per_run / t_theirs, 2),
            "ratio": round(t_theirs / t_ours, 3), "floor_tokens_per_s": round(floor, 2),
            "lmlab_fraction_of_floor": round(per_run / t_ours / floor, 3),
        }), flush=True)


def naive_greedy(model, ids: torch.Tensor, n: int) -> None:
    """Greedy decoding without a cache: the whole sequence again at every step."""
    with torch.inference_mode():
        for _ in range(n):
            token = model(ids)[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, token], dim=1)


def scaling(ours, device: str, lengths: list[int], nocache_max: int) -> None:
    ids = prompts(1, ours.config.vocab_size).to(device)
    run_lmlab(ours, ids, GenerationConfig(max_new_tokens=4))  # warm up (first touch of the weights)
    naive_greedy(ours, ids, 2)
    for n in lengths:
        config = GenerationConfig(max_new_tokens=n, strategy="greedy")
        t = timed(lambda: run_lmlab(ours, ids, config), device, 1)
        row = {"case": f"scaling-{n}", "lmlab_tokens_per_s": round(n / t, 2)}
        if n <= nocache_max:
            t_naive = timed(lambda: naive_greedy(ours, ids, n), device, 1)
            row["nocache_tokens_per_s"] = round(n / t_naive, 2)
            row["speedup_vs_nocache"] = round(t_naive / t, 2)
        print(json.dumps(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model and few tokens: check the script runs")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "both"), default="float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=2, help="best of this many timed runs per case")
    parser.add_argument("--nocache-max", type=int, default=256, help="longest uncached run (it is quadratic)")
    parser.add_argument("--no-scaling", action="store_true")
    parser.add_argument("--cases", default=",".join(c[0] for c in CASES),
                        help="comma-separated cases to compare (default: all; 'none' for only the scaling rows)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    parser.add_argument("--bandwidth-gbps", type=float,
                        help="memory bandwidth for the floor (default: measured here; CI's machine: about 32)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lengths = [16, 32, 64] if args.quick else [64, 256, 1024]
    ref, ours = build_models(PROMPT_LEN + max(lengths), args.quick)
    bw = args.bandwidth_gbps * 1e9 if args.bandwidth_gbps else bandwidth(args.device)
    print(json.dumps({"info": "setup", "weight_bytes_float32": weight_bytes(ours), "bandwidth_GBps": round(bw / 1e9, 2),
                      "threads": torch.get_num_threads(), "device": args.device,
                      "native_kernel": native_status()}), flush=True)
    dtypes = {"float32": [torch.float32], "bfloat16": [torch.bfloat16], "both": [torch.float32, torch.bfloat16]}
    for dtype in dtypes[args.dtype]:
        ref_d, ours_d = ref.to(args.device, dtype), ours.to(args.device, dtype)
        compare(ref_d, ours_d, dtype, args.device, args.repeats, args.quick, bw, set(args.cases.split(",")))
        if dtype == torch.float32 and not args.no_scaling:
            scaling(ours_d, args.device, lengths, args.nocache_max)


if __name__ == "__main__":
    main()
