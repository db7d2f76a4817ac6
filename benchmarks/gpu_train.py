"""Training speed on one device: lmlab's trainer against transformers' GPT2LMHeadModel, same run.

    python benchmarks/gpu_train.py                                  # GPT-2 124M, bf16-mixed, compiled
    python benchmarks/gpu_train.py --data tinyshakespeare.txt --steps 60 --batch-size 16
    python benchmarks/gpu_train.py --tiny --device cpu --steps 4 --no-compile   # the test suite's smoke run

Both sides are the GPT-2 124M shape by default (12 layers, 768 dims, 12 heads, context 1024,
vocab 50257, no dropout, tied embeddings); ``--tiny`` is 2 layers, 64 dims, context 64. The
transformers model is built from lmlab's own GPT-2 export config and starts from the lmlab
model's initial weights. Each side is an lmlab :class:`~lmlab.training.trainer.Trainer` over the
same task, so both get the same batches (random tokens, seeded, or ``--data`` encoded by
characters), the same fused AdamW, learning-rate schedule, autocast dtype (bf16-mixed on CUDA,
fp32 on the CPU unless ``--precision``), torch.compile and gradient clipping; only the model
differs (transformers' forward returns ``.logits`` to the same loss).

After each side's compiling step (``compile_s``) and ``--warmup`` more steps, the two train in
alternating blocks of ``--block`` steps (the order swapping every round) until each has timed
``--steps`` steps; the device is synchronised around each block. Output, one JSON line each: the
setup, then per side ``tokens_per_s``, ``mfu`` (model FLOPs per token from
:mod:`lmlab.training.reports`, both sides counted with the lmlab model's figure, over the device
peak from its table, or the measured matmul peak on the CPU), ``peak_memory_bytes`` (CUDA's
maximum allocated during that side's blocks, both models' weights and optimizer states being
resident; the process's peak RSS on the CPU) and the last loss, then ``ratio`` (lmlab tokens/s
over transformers').
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from lmlab.data.corpora import load_corpus
from lmlab.data.windows import TokenSpan, token_tensor
from lmlab.errors import LmlabError
from lmlab.interop.gpt2 import export_config, export_tensors
from lmlab.models import build_model
from lmlab.tokenizers import CharTokenizer
from lmlab.training import reports
from lmlab.training.config import RunConfig
from lmlab.training.devices import synchronize
from lmlab.training.objective_registry import ObjectiveTask
from lmlab.training.trainer import Trainer

SHAPES = {
    "gpt2-124m": dict(n_layer=12, n_head=12, d_model=768, context_length=1024, vocab_size=50257),
    "tiny": dict(n_layer=2, n_head=4, d_model=64, context_length=64, vocab_size=512),
}
RANDOM_TOKENS = 2_000_000  # length of the random-token corpus (windows are drawn from it)
SIDES = ("lmlab", "transformers")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    parser.add_argument("--steps", type=int, default=100, help="timed steps per side")
    parser.add_argument("--block", type=int, default=20, help="steps per alternating block")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per side after the compiling one")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--precision", help="train.precision (default: bf16-mixed on CUDA, fp32 on the CPU)")
    parser.add_argument("--data", help="a text file (e.g. tinyshakespeare.txt), encoded by characters; "
                                       "default: random tokens")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer, 64-dim, context-64 model (CPU smoke test)")
    parser.add_argument("--no-compile", action="store_true", help="train without torch.compile")
    parser.add_argument("--seed", type=int, default=1337)
    args = parser.parse_args()
    if min(args.steps, args.block, args.batch_size) < 1 or args.warmup < 0:
        parser.error("--steps, --block and --batch-size must be at least 1, --warmup at least 0")
    return args


def run_config(args: argparse.Namespace) -> RunConfig:
    """The run both sides train: the shape, no dropout, GPT-2's AdamW settings, the device."""
    config = RunConfig()
    shape = SHAPES["tiny" if args.tiny else "gpt2-124m"]
    for key, value in shape.items():
        setattr(config.model, key, value)
    config.model.dropout = 0.0
    config.model.ffn = "gelu-tanh"  # GPT-2's gelu_new
    train = config.train
    train.batch_size, train.seed = args.batch_size, args.seed
    train.lr, train.min_lr, train.warmup_steps, train.max_steps = 6e-4, 6e-5, 10, 10_000
    train.beta1, train.beta2, train.weight_decay, train.grad_clip = 0.9, 0.95, 0.1, 1.0
    train.device = args.device
    cuda = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
    train.precision = args.precision or ("bf16-mixed" if cuda else "fp32")
    train.compile = not args.no_compile
    train.validate()
    return config


def token_spans(args: argparse.Namespace, vocab_size: int) -> tuple[TokenSpan, TokenSpan]:
    """(training, validation) spans: seeded random tokens, or ``--data`` encoded by characters."""
    if args.data:
        text = load_corpus(args.data)
        tokenizer = CharTokenizer.from_text(text)
        if tokenizer.vocab_size > vocab_size:
            raise LmlabError(f"{args.data} has {tokenizer.vocab_size} distinct characters, more than the "
                             f"model's vocabulary of {vocab_size}; use a smaller text")
        ids = token_tensor(tokenizer.encode(text))
    else:
        generator = torch.Generator().manual_seed(args.seed)
        ids = torch.randint(0, vocab_size, (RANDOM_TOKENS,), generator=generator)
    cut = int(len(ids) * 0.9)
    return TokenSpan(ids[:cut], name="training"), TokenSpan(ids[cut:], name="validation")


class LogitsOnly(nn.Module):
    """transformers' causal LM called the way lmlab's loss calls a model: ids → (B, T, V) logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits  # (B, T, V)


def transformers_twin(lmlab_model: nn.Module, config: RunConfig) -> nn.Module:
    """transformers' GPT2LMHeadModel of the same config, holding the lmlab model's weights."""
    import transformers

    fields = {k: v for k, v in export_config(config.model).items() if k not in ("model_type", "architectures")}
    hf_config = transformers.GPT2Config(**fields, use_cache=False, bos_token_id=None, eos_token_id=None)
    model = transformers.GPT2LMHeadModel(hf_config)
    missing, unexpected = model.load_state_dict(export_tensors(lmlab_model, config.model), strict=False)
    if unexpected or [name for name in missing if name != "lm_head.weight"]:  # the tied head comes with wte
        raise RuntimeError(f"GPT-2 weights do not line up: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    return LogitsOnly(model)


def make_trainers(config: RunConfig, task: ObjectiveTask, run_dir: Path) -> dict[str, Trainer]:
    """One trainer per side, over the same task and config (the run directory is never written)."""
    torch.manual_seed(config.train.seed)
    ours = build_model(config.model)
    theirs = transformers_twin(ours, config)
    return {side: Trainer(config, model, task, run_dir / side, progress=False, echo=_to_stderr)
            for side, model in zip(SIDES, (ours, theirs))}


def train_steps(trainer: Trainer, steps: int) -> torch.Tensor:
    """``steps`` optimizer steps of the trainer's own step (:meth:`Trainer.train_step`); returns the
    last loss (on the device)."""
    loss = torch.zeros(())
    for _ in range(steps):
        loss, _ = trainer.train_step()
    return loss


def timed_block(trainer: Trainer, steps: int) -> tuple[float, int, torch.Tensor]:
    """(seconds, peak memory bytes, last loss) of ``steps`` steps, the device synchronised around them."""
    device = trainer.placement.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    start = time.perf_counter()
    loss = train_steps(trainer, steps)
    synchronize(device)
    return time.perf_counter() - start, reports.peak_memory_bytes(device), loss


def warm_up(trainer: Trainer, steps: int) -> None:
    """The compiling step (its time becomes ``trainer.compile_s``) and ``steps`` more."""
    train_steps(trainer, 1)
    train_steps(trainer, steps)
    synchronize(trainer.placement.device)


def measure(trainers: dict[str, Trainer], steps: int, block: int) -> dict[str, dict]:
    """Alternating blocks until each side has timed ``steps`` steps: seconds, peak memory, last loss."""
    totals = {side: {"seconds": 0.0, "steps": 0, "peak_memory_bytes": 0, "loss": None} for side in trainers}
    round_index = 0
    while totals[SIDES[0]]["steps"] < steps:
        n = min(block, steps - totals[SIDES[0]]["steps"])
        order = SIDES if round_index % 2 == 0 else SIDES[::-1]
        for side in order:
            seconds, peak, loss = timed_block(trainers[side], n)
            total = totals[side]
            total["seconds"] += seconds
            total["steps"] += n
            total["peak_memory_bytes"] = max(total["peak_memory_bytes"], peak)
            total["loss"] = float(loss)
        round_index += 1
    return totals


def side_row(side: str, trainer: Trainer, total: dict, flops: int, peak: float | None) -> dict:
    tokens_per_s = total["steps"] * trainer.task.tokens_per_batch / max(total["seconds"], 1e-9)
    return {"side": side, "compiled": trainer._forward_model is not trainer.model,
            "compile_s": round(trainer.compile_s, 2) if trainer.compile_s is not None else None,
            "steps": total["steps"], "tokens_per_s": round(tokens_per_s, 1),
            "ms_per_step": round(1000 * total["seconds"] / total["steps"], 2),
            "mfu": _rounded(reports.mfu(tokens_per_s, flops, peak)),
            "peak_memory_bytes": total["peak_memory_bytes"], "loss": round(total["loss"], 4)}


def _to_stderr(message: str) -> None:
    """The trainers' messages (a compile fallback's warning), kept out of the JSON lines on stdout."""
    print(message, file=sys.stderr)


def _rounded(value: float | None) -> float | None:
    return round(value, 4) if value is not None else None


def benchmark(args: argparse.Namespace) -> None:
    """The JSON lines: setup, one row per side, the ratio."""
    config = run_config(args)
    train_tokens, val_tokens = token_spans(args, config.model.vocab_size)
    task = ObjectiveTask("causal-lm", CharTokenizer.from_text("ab"), train_tokens, val_tokens,
                         config.train.batch_size, config.model.context_length)
    with tempfile.TemporaryDirectory() as run_dir:
        trainers = make_trainers(config, task, Path(run_dir))
        ours = trainers["lmlab"]
        placement = ours.placement
        peak, source = reports.peak_flops(placement.device, placement.compute_dtype,
                                          tf32=placement.precision != "fp32-strict")
        flops = ours.flops_per_token  # the same shape on both sides: lmlab's count of it
        print(json.dumps({
            "setup": "tiny" if args.tiny else "gpt2-124m", "device": str(placement.device),
            "precision": placement.precision, "compile": placement.compile, "batch_size": config.train.batch_size,
            "context_length": config.model.context_length, "data": args.data or "random",
            "parameters": sum(p.numel() for p in ours.model.parameters()),
            "matmul_parameters": {side: reports.matmul_parameters(t.model) for side, t in trainers.items()},
            "flops_per_token": flops, "peak_flops": peak, "peak_flops_source": source,
            "fused_adamw": bool(ours.optimizer.defaults.get("fused")),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
        }), flush=True)
        for trainer in trainers.values():
            warm_up(trainer, args.warmup)
        totals = measure(trainers, args.steps, args.block)
        rows = {side: side_row(side, trainers[side], totals[side], flops, peak) for side in SIDES}
    for row in rows.values():
        print(json.dumps(row), flush=True)
    print(json.dumps({"ratio": round(rows["lmlab"]["tokens_per_s"] / rows["transformers"]["tokens_per_s"], 3)}))


def main() -> None:
    try:
        benchmark(parse_args())
    except LmlabError as exc:  # an unavailable --device, a bad setting
        raise SystemExit(f"gpu_train.py: {exc}") from None


if __name__ == "__main__":
    main()
