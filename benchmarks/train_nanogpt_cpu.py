"""Training speed and final loss: lmlab's trainer against transformers' GPT-2, step by step in one run.

    python benchmarks/train_nanogpt_cpu.py --data ../shared/data/tinyshakespeare.txt
    python benchmarks/train_nanogpt_cpu.py --data tinyshakespeare.txt --max-steps 500
    python benchmarks/train_nanogpt_cpu.py --data tinyshakespeare.txt --quick

lmlab trains the ``nanogpt-cpu`` preset (nanoGPT's documented CPU run of the Shakespeare character
model) with its own trainer (``Trainer.fit``). The peer is ``transformers``' ``GPT2LMHeadModel`` at
the same shape (layers, heads, width, block size, the run's character vocabulary, dropout, exact
GELU, tied embeddings; GPT-2's biases are zeroed and frozen, as nanoGPT's ``bias=False`` has none)
trained the way nanoGPT's ``train.py`` trains it: the same (seed, step) batches lmlab's trainer
draws, nanoGPT's warm-up + cosine learning rate (written out below, independently of lmlab's),
AdamW with weight decay on the 2-D weights only (fused where the device has it), gradient
clipping at 1.0, the loss read every step (nanoGPT's CPU run logs every iteration), float32.

lmlab's float32 linear layers run through oneDNN where the CPU has AVX-512
(:mod:`lmlab.kernels.onednn_linear`, the trainer's own choice; ``LMLAB_NATIVE_KERNELS=0`` keeps
PyTorch's MKL product, the one the peer uses); ``lmlab_linear`` in the output says which ran.

The two alternate step by step in one process, so the machine's load falls on both alike. One JSON
line: both median step times (the first steps left out) and tokens/s, their ratio (``speedup``:
transformers' step time over lmlab's), both final validation losses with the same two
estimators — nanoGPT's (the mean over ``train.eval_batches`` random validation batches; the same
batches for both) and the whole validation split — and lmlab's minus the peer's.

``--same-init`` starts the peer from lmlab's initial weights (carried over with lmlab's GPT-2
export) instead of its own draw from the same initialisation scheme: the two then see the same
weights and the same batches, so what is left of the loss difference comes from the training
itself (optimizer, schedule, numerics), not from the draw. ``--quick`` trains a few steps (a
smoke test of the script). On a shared machine the times move
with the load; the ratio, measured alternately in one run, is the figure to read.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.evaluation import evaluate_lm
from lmlab.kernels.onednn_linear import onednn_linear_available
from lmlab.interop.gpt2 import export_tensors
from lmlab.training.config import RunConfig, TrainConfig, apply_overrides, load_preset
from lmlab.training.objective_registry import ObjectiveTask
from lmlab.training.run import make_trainer
from lmlab.training.trainer import batch_generator

QUICK_STEPS = 6
QUICK_EVAL_BATCHES = 2
FIRST_STEPS_LEFT_OUT = 20  # allocation and caches warming up; fewer in a short run (see steady)
FULL_EVAL_BATCH = 64


def nanogpt_learning_rate(step: int, cfg: TrainConfig) -> float:
    """nanoGPT's ``get_lr``: linear warm-up, cosine decay to ``min_lr`` at ``max_steps``, then flat."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / (cfg.warmup_steps + 1)
    if step > cfg.max_steps:
        return cfg.min_lr
    decay_ratio = (step - cfg.warmup_steps) / (cfg.max_steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * decay_ratio)) * (cfg.lr - cfg.min_lr)


def gpt2_peer(config: RunConfig, start_from: nn.Module | None = None) -> nn.Module:
    """``GPT2LMHeadModel`` at the run's shape, initialised by transformers (GPT-2's scheme, as
    nanoGPT's) or holding ``start_from``'s weights (an lmlab model), in train mode, its biases
    zero and frozen when the run has none."""
    import transformers

    model = config.model
    gpt2 = transformers.GPT2Config(
        vocab_size=model.vocab_size, n_positions=model.context_length, n_embd=model.d_model,
        n_layer=model.n_layer, n_head=model.n_head, n_inner=model.ffn_width, activation_function="gelu",
        resid_pdrop=model.dropout, embd_pdrop=model.dropout, attn_pdrop=model.dropout,
        layer_norm_epsilon=model.norm_eps, tie_word_embeddings=model.tie_embeddings, use_cache=False,
        bos_token_id=None, eos_token_id=None,  # GPT-2's 50256 is outside a character vocabulary
        attn_implementation="sdpa",  # scaled_dot_product_attention, as nanoGPT's and lmlab's
    )
    torch.manual_seed(config.train.seed)
    peer = transformers.GPT2LMHeadModel(gpt2)
    if start_from is not None:
        missing, unexpected = peer.load_state_dict(export_tensors(start_from, model), strict=False)
        if unexpected or any(not name.endswith(".bias") and name != "lm_head.weight" for name in missing):
            raise SystemExit(f"lmlab's weights do not fit GPT-2: missing {missing}, unexpected {unexpected}")
        peer.tie_weights()
    if not model.bias:
        for name, param in peer.named_parameters():
            if name.endswith(".bias"):
                param.data.zero_()
                param.requires_grad_(False)
    return peer.train()


def nanogpt_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """nanoGPT's ``configure_optimizers``: decay on every parameter of 2 or more dimensions."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    try:
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=True)
    except RuntimeError:  # no fused kernel on this device
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


class PeerSteps:
    """The peer's training: one step each time lmlab's trainer has taken one (the trainer's
    ``between_steps``, called outside its timing of its own step)."""

    def __init__(self, peer: nn.Module, task: ObjectiveTask, cfg: TrainConfig):
        self.peer, self.task, self.cfg = peer, task, cfg
        self.optimizer = nanogpt_optimizer(peer, cfg)
        self.step_seconds: list[float] = []
        self.step = 0

    def __call__(self, lmlab_step: int) -> None:
        start = time.perf_counter()
        self.train_step()
        self.step_seconds.append(time.perf_counter() - start)

    def train_step(self) -> None:
        """nanoGPT's iteration (gradient accumulation 1) on lmlab's batch of this step."""
        for group in self.optimizer.param_groups:
            group["lr"] = nanogpt_learning_rate(self.step, self.cfg)
        batch = self.task.train_batch(batch_generator(self.cfg.seed, self.step))
        logits = self.peer(input_ids=batch.input_ids).logits  # (B, T, V)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), batch.labels.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.peer.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss.item()  # nanoGPT logs the loss of every iteration on the CPU
        self.step += 1


class LogitsOnly(nn.Module):
    """A transformers causal LM called as lmlab's decoders are: ``model(ids)`` → logits (B, T, V)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids).logits


def validation_losses(model: nn.Module, task: ObjectiveTask, cfg: TrainConfig, context: int) -> dict[str, float]:
    """nanoGPT's estimator (``eval_batches`` random validation batches, the run's seed) and the
    loss over the whole validation split."""
    sampled = task.evaluate(model, cfg.eval_batches, seed=cfg.seed)["loss"]
    full = evaluate_lm(model, task.val_tokens.sequential_windows(FULL_EVAL_BATCH, context))["loss"]
    return {"val_loss_sampled": sampled, "val_loss": full}


def steady(step_seconds: list[float]) -> float:
    """Median seconds per step, the first steps (at most half of them) left out."""
    skip = min(FIRST_STEPS_LEFT_OUT, len(step_seconds) // 2)
    return statistics.median(step_seconds[skip:])


def configured(args: argparse.Namespace) -> RunConfig:
    config = load_preset(args.preset)
    config.data.corpus = args.data
    config.train.sample_chars = 0
    config.train.checkpoint_every = 10**9
    config.train.device = "cpu"
    config.train.precision = "fp32"
    config.train.max_time = None
    if args.quick:
        config.train.max_steps, config.train.eval_batches = QUICK_STEPS, QUICK_EVAL_BATCHES
    if args.max_steps:
        config.train.max_steps = args.max_steps
    apply_overrides(config, args.set)
    if config.train.grad_accum != 1:
        raise SystemExit("the peer trains without gradient accumulation: keep train.grad_accum=1")
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="tinyshakespeare.txt (or a corpus name)")
    parser.add_argument("--preset", default="nanogpt-cpu")
    parser.add_argument("--max-steps", type=int, help="steps for both (default: the preset's)")
    parser.add_argument("--same-init", action="store_true", help="the peer starts from lmlab's initial weights")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_STEPS} steps: a smoke test of the script")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides, as for lmlab train")
    args = parser.parse_args()
    config = configured(args)

    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        trainer, _ = make_trainer(config, out, progress=False)
        peer = PeerSteps(gpt2_peer(config, trainer.model if args.same_init else None), trainer.task, config.train)
        trainer.between_steps = peer
        trainer.fit()
        wall = time.perf_counter() - start
    context, cfg = config.model.context_length, config.train
    ours = validation_losses(trainer.model, trainer.task, cfg, context)
    theirs = validation_losses(LogitsOnly(peer.peer), trainer.task, cfg, context)
    ours_s, theirs_s = steady(trainer.step_seconds), steady(peer.step_seconds)
    tokens = trainer.task.tokens_per_batch * cfg.grad_accum
    print(json.dumps({
        "preset": args.preset, "same_init": args.same_init, "steps": trainer.step, "peer_steps": peer.step,
        "lmlab_ms_per_iter": round(1000 * ours_s, 2), "transformers_ms_per_iter": round(1000 * theirs_s, 2),
        "lmlab_tokens_per_s": round(tokens / ours_s), "transformers_tokens_per_s": round(tokens / theirs_s),
        "speedup": round(theirs_s / ours_s, 3),
        **{f"lmlab_{name}": round(value, 4) for name, value in ours.items()},
        **{f"transformers_{name}": round(value, 4) for name, value in theirs.items()},
        "val_loss_diff": round(ours["val_loss"] - theirs["val_loss"], 4),
        "val_loss_sampled_diff": round(ours["val_loss_sampled"] - theirs["val_loss_sampled"], 4),
        "eval_batches": cfg.eval_batches, "threads": torch.get_num_threads(), "wall_s": round(wall, 1),
        "lmlab_linear": "onednn" if onednn_linear_available() else "mkl",
    }))


if __name__ == "__main__":
    main()
