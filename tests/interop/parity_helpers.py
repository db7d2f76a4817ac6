"""Shared helpers of the interop parity tests: tiny tokenizers, padded batches, perturbed models,
comparisons."""

from __future__ import annotations

from pathlib import Path

import torch

TOL = 1e-4


def write_tokenizer(directory: Path, vocab_size: int) -> None:
    """A WordLevel tokenizer.json with ``vocab_size`` tokens (special tokens first)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    words = specials + [f"w{i}" for i in range(vocab_size - len(specials))]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(specials)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))


def padded_batch(vocab_size: int, lengths: list[int], seed: int = 0, low: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded random ids (B, T) and the bool mask (True at real tokens)."""
    gen = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.randint(low, vocab_size, (len(lengths), T), generator=gen)
    mask = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
    ids = ids.masked_fill(~mask, 0)
    return ids, mask


def perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """Random norms, biases and relative-bias tables, so every exported tensor matters."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 1:
                param.normal_(mean=1.0 if "norm" in name and name.endswith("weight") else 0.0, std=0.1)
            elif "relative_bias" in name:
                param.normal_(std=0.5)
    return model.eval()


def max_diff(ours: torch.Tensor, theirs: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Largest absolute difference, over the real (mask True) positions only."""
    if mask is not None:
        ours, theirs = ours[mask], theirs[mask]
    return (ours.float() - theirs.float()).abs().max().item()
