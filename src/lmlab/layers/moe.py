"""Mixture-of-Experts feed-forward: a router sends each token to a few expert FFNs.

Two routers, chosen by name (:data:`ROUTERS`):

- ``token-choice``: each token picks its top-k experts (k=1 as in Switch, k=2 as in GShard /
  Mixtral). In training an expert takes at most ``capacity = ⌈capacity_factor · N · k / E⌉`` of
  the N tokens; the overflow is dropped (first choices are served before second choices, as in
  GShard) unless token dropping is off. Gates are the router probabilities, renormalised over the
  k picks when k > 1.
- ``expert-choice`` (Zhou et al., 2022): in training each expert takes its top
  ``⌈capacity_factor · N / E⌉`` tokens, so load is balanced by construction; a token may get any
  number of experts, including none. Gates are the raw router probabilities.

Capacity is a training device only. Whether a token is dropped (token-choice) or which tokens an
expert takes (expert-choice) depends on every token of the batch, later positions and other
sequences included, so at evaluation and generation (``not self.training``) it would let future
tokens change the outputs of earlier positions of a causal decoder, and make cached decoding
disagree with the full pass. There, each token is routed on its own: token-choice sends it to its
top-k experts with no capacity limit, and expert-choice, which cannot be made causal as it is,
sends it to its top ``round(capacity_factor)`` experts (at least one) — the number of experts a
token gets on average in training — with the same raw-probability gates.

After each forward the layer holds its weighted auxiliary loss (``aux_loss``: the Switch
load-balancing loss E·Σᵢ fᵢ·Pᵢ and the router z-loss) and per-expert utilisation (``load``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Routing:
    """The (token, expert) pairs to compute, each with the weight of the expert's output."""

    token: torch.Tensor  # (M,) index of the token in the flattened batch
    expert: torch.Tensor  # (M,) expert index
    gate: torch.Tensor  # (M,) weight of that expert's output
    assigned: torch.Tensor | None  # (E,) share of routing choices per expert before capacity (token-choice)


def token_choice(probs: torch.Tensor, top_k: int, capacity: int) -> Routing:
    """Each token's top-k experts, each expert keeping its first ``capacity`` tokens. probs: (N, E)."""
    N, E = probs.shape
    gate, expert = probs.topk(top_k, dim=-1)  # (N, k)
    if top_k > 1:
        gate = gate / gate.sum(dim=-1, keepdim=True)
    expert, gate = expert.t().reshape(-1), gate.t().reshape(-1)  # (k·N,) all first choices first
    token = torch.arange(N, device=probs.device).repeat(top_k)  # (k·N,)
    one_hot = F.one_hot(expert, E)  # (k·N, E)
    rank = (one_hot.cumsum(dim=0) * one_hot).sum(dim=-1) - 1  # (k·N,) arrival order at its expert
    keep = rank < capacity
    assigned = one_hot.float().mean(dim=0)  # (E,)
    return Routing(token[keep], expert[keep], gate[keep], assigned)


def expert_choice(probs: torch.Tensor, capacity: int) -> Routing:
    """Each expert's top ``capacity`` tokens by router probability. probs: (N, E)."""
    N, E = probs.shape
    gate, token = probs.t().topk(min(capacity, N), dim=-1)  # (E, c)
    expert = torch.arange(E, device=probs.device)[:, None].expand_as(token)  # (E, c)
    return Routing(token.reshape(-1), expert.reshape(-1), gate.reshape(-1), assigned=None)


def per_token_top_k(probs: torch.Tensor, k: int) -> Routing:
    """Each token's top-k experts, gated by the raw router probabilities, decided for each token
    alone (causal: expert-choice's stand-in outside training). probs: (N, E)."""
    N, E = probs.shape
    gate, expert = probs.topk(k, dim=-1)  # (N, k)
    token = torch.arange(N, device=probs.device).repeat_interleave(k)  # (N·k,)
    return Routing(token, expert.reshape(-1), gate.reshape(-1), assigned=None)


ROUTERS = ("token-choice", "expert-choice")


def load_balancing_loss(assigned: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Switch Transformer's E · Σᵢ fᵢ·Pᵢ: fᵢ the share of choices for expert i, Pᵢ its mean
    router probability. 1 when perfectly balanced."""
    return probs.size(-1) * (assigned * probs.mean(dim=0)).sum()


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE's z-loss: mean squared log-sum-exp of the router logits (keeps them small)."""
    return torch.logsumexp(logits, dim=-1).square().mean()


class MoEFeedForward(nn.Module):
    """A router and ``len(experts)`` expert feed-forwards in place of one dense FFN.

    ``drop_tokens`` False lifts the token-choice capacity in training too, so no token is ever
    dropped (outside training there is no capacity either way).
    ``balance_weight`` and ``z_weight`` scale the two auxiliary losses in :attr:`aux_loss`.
    """

    def __init__(
        self,
        experts: list[nn.Module],
        d_model: int,
        router: str = "token-choice",
        top_k: int = 2,
        capacity_factor: float = 1.25,
        drop_tokens: bool = True,
        balance_weight: float = 0.01,
        z_weight: float = 0.001,
    ):
        super().__init__()
        if router not in ROUTERS:
            raise ValueError(f"unknown router {router!r}; choose one of {', '.join(ROUTERS)}")
        if not 1 <= top_k <= len(experts):
            raise ValueError(f"top_k ({top_k}) must be between 1 and the number of experts ({len(experts)})")
        self.experts = nn.ModuleList(experts)
        self.router = nn.Linear(d_model, len(experts), bias=False)
        self.router_kind = router
        self.top_k = top_k
        self.capacity_factor = capacity_factor
        self.drop_tokens = drop_tokens
        self.balance_weight = balance_weight
        self.z_weight = z_weight
        self.aux_loss = torch.zeros(())  # weighted auxiliary loss of the last forward
        self.load = torch.zeros(len(experts))  # (E,) share of computed (token, expert) pairs per expert
        self.dropped = 0.0  # share of tokens of the last forward that no expert processed

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, C) → (B, T, C)."""
        B, T, C = x.shape
        tokens = x.reshape(B * T, C)  # (N, C)
        logits = self.router(tokens).float()  # (N, E)
        probs = logits.softmax(dim=-1)  # (N, E)
        routing = self.route(probs)
        out = self._run_experts(tokens, routing)  # (N, C)
        self._record(logits, probs, routing)
        return out.view(B, T, C)

    def route(self, probs: torch.Tensor) -> Routing:
        """The (token, expert) pairs for router probabilities ``probs`` (N, E): with capacity in
        training, token by token (causal, nothing dropped) otherwise."""
        N, E = probs.shape
        if self.router_kind == "expert-choice":
            if not self.training:
                return per_token_top_k(probs, self.experts_per_token_at_inference)
            return expert_choice(probs, math.ceil(self.capacity_factor * N / E))
        drops = self.drop_tokens and self.training
        capacity = math.ceil(self.capacity_factor * N * self.top_k / E) if drops else N
        return token_choice(probs, self.top_k, capacity)

    @property
    def experts_per_token_at_inference(self) -> int:
        """Expert-choice outside training: ``round(capacity_factor)`` experts per token (the
        average in training), at least 1 and at most all of them."""
        return min(max(round(self.capacity_factor), 1), self.num_experts)

    def _run_experts(self, tokens: torch.Tensor, routing: Routing) -> torch.Tensor:
        """Σ over pairs of gate · expert(token), grouped so each expert runs once. tokens: (N, C)."""
        order = routing.expert.argsort(stable=True)
        token, gate = routing.token[order], routing.gate[order]  # (M,)
        counts = torch.bincount(routing.expert, minlength=self.num_experts).tolist()
        outputs = [
            expert(tokens[chosen]) for expert, chosen in zip(self.experts, token.split(counts)) if chosen.numel()
        ]
        if not outputs:
            return torch.zeros_like(tokens)
        weighted = torch.cat(outputs) * gate[:, None].to(tokens.dtype)  # (M, C)
        return torch.zeros_like(tokens).index_add(0, token, weighted)

    def _record(self, logits: torch.Tensor, probs: torch.Tensor, routing: Routing) -> None:
        balance = load_balancing_loss(routing.assigned, probs) if routing.assigned is not None else 0.0
        self.aux_loss = self.balance_weight * balance + self.z_weight * router_z_loss(logits)
        counts = torch.bincount(routing.expert, minlength=self.num_experts).float()
        self.load = (counts / counts.sum().clamp(min=1)).detach()
        served = torch.zeros(probs.size(0), device=probs.device).index_fill_(0, routing.token, 1.0)
        self.dropped = 1.0 - served.mean().item()

    def inactive_parameters(self) -> int:
        """Expert parameters a token does not use on average (for the active-parameter count)."""
        per_expert = sum(p.numel() for p in self.experts[0].parameters())
        used = self.capacity_factor if self.router_kind == "expert-choice" else self.top_k
        return round((self.num_experts - min(used, self.num_experts)) * per_expert)

