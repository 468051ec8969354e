"""Order-parameter arithmetic (§6): intervals and divergences, on plain tensors and numbers."""

from __future__ import annotations

import math

import torch
from scipy.stats import norm


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (well behaved at 0 and 1, unlike Wald)."""
    if n == 0:
        return (math.nan, math.nan)
    z = float(norm.ppf(0.5 + confidence / 2))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


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
