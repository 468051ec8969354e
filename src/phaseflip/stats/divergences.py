"""Divergences between next-token distributions and the cosine of two directions, on tensors."""

from __future__ import annotations

import math

import torch


def kl_divergence(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) along the last axis, from log-probabilities."""
    return (logp.exp() * (logp - logq)).sum(dim=-1)


def js_divergence(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence (nats) along the last axis: symmetric, bounded by ln 2, 0 iff equal."""
    logm = torch.logsumexp(torch.stack([logp, logq]), dim=0) - math.log(2)
    return 0.5 * kl_divergence(logp, logm) + 0.5 * kl_divergence(logq, logm)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.norm() == 0 or b.norm() == 0:
        return math.nan
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))
