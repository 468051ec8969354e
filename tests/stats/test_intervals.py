import math

import numpy as np
import pytest
import torch

from phaseflip.stats.divergences import cosine, js_divergence, kl_divergence
from phaseflip.stats.intervals import clustered_interval, wilson_interval


@pytest.mark.parametrize(
    ("k", "n", "lo", "hi"),
    [(0, 10, 0.0, 0.2775), (10, 10, 0.7225, 1.0), (5, 10, 0.2366, 0.7634), (1, 20, 0.0089, 0.2361)],
)
def test_wilson_interval_known_values(k: int, n: int, lo: float, hi: float) -> None:
    got = wilson_interval(k, n)
    assert got == pytest.approx((lo, hi), abs=1e-3)


def test_wilson_interval_always_contains_the_estimate() -> None:
    """13 of 13 gave hi = 1 - 1e-16 < 1.0 by rounding: a negative error bar in the calibration figure."""
    for n in range(1, 300):
        for k in (0, 1, n // 2, n - 1, n):
            lo, hi = wilson_interval(k, n)
            assert 0.0 <= lo <= k / n <= hi <= 1.0, (k, n, lo, hi)


def test_wilson_interval_of_nothing_is_nan() -> None:
    assert all(math.isnan(x) for x in wilson_interval(0, 0))


def test_divergences() -> None:
    p = torch.log_softmax(torch.randn(4, 50), dim=-1)
    q = torch.log_softmax(torch.randn(4, 50), dim=-1)
    assert torch.allclose(js_divergence(p, p), torch.zeros(4), atol=1e-6)
    assert torch.allclose(kl_divergence(p, p), torch.zeros(4), atol=1e-6)
    js = js_divergence(p, q)
    assert torch.all(js > 0) and torch.all(js <= math.log(2) + 1e-6)
    assert torch.allclose(js, js_divergence(q, p), atol=1e-6)
    assert torch.all(kl_divergence(p, q) > 0)


def test_cosine() -> None:
    v = torch.tensor([1.0, 2.0, 3.0])
    assert cosine(v, 2 * v) == pytest.approx(1.0)
    assert cosine(v, -v) == pytest.approx(-1.0)
    assert math.isnan(cosine(v, torch.zeros(3)))


def _coverage(method: str, p: float, scenarios: int, samples: int, icc: float, sims: int, seed: int) -> float:
    """Share of simulated clustered draws whose 95% interval holds the true rate p."""
    rng = np.random.default_rng(seed)
    a, b = p * (1 - icc) / icc, (1 - p) * (1 - icc) / icc  # scenario rates ~ Beta with mean p, ICC icc
    hits = 0
    for _ in range(sims):
        k = rng.binomial(samples, rng.beta(a, b, scenarios))
        n = np.full(scenarios, samples)
        lo, hi = clustered_interval(k, n) if method == "clustered" else wilson_interval(int(k.sum()), int(n.sum()))
        hits += lo <= p <= hi
    return hits / sims


@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
@pytest.mark.parametrize(("scenarios", "samples"), [(20, 2), (20, 4), (10, 3)])
def test_clustered_interval_covers_the_true_rate_where_wilson_does_not(p: float, scenarios: int,
                                                                       samples: int) -> None:
    clustered = _coverage("clustered", p, scenarios, samples, icc=0.3, sims=600, seed=1)
    wilson = _coverage("wilson", p, scenarios, samples, icc=0.3, sims=600, seed=1)
    print(f"p={p} {scenarios}x{samples}: clustered {clustered:.3f}, Wilson {wilson:.3f}")
    assert clustered >= 0.93
    assert wilson < clustered  # the independent-samples interval is too narrow on clustered data


def test_clustered_interval_reduces_to_wilson_without_clustering_information() -> None:
    assert clustered_interval([3], [10]) == pytest.approx(wilson_interval(3, 10))  # one cluster
    lo, hi = clustered_interval([0] * 20, [4] * 20)  # all zero: one effective sample per scenario
    assert lo == 0 and hi == pytest.approx(wilson_interval(0, 20)[1])
