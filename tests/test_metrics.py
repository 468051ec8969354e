import math

import pytest
import torch

from phaseflip.metrics import cosine, js_divergence, kl_divergence, wilson_interval


@pytest.mark.parametrize(
    ("k", "n", "lo", "hi"),
    [(0, 10, 0.0, 0.2775), (10, 10, 0.7225, 1.0), (5, 10, 0.2366, 0.7634), (1, 20, 0.0089, 0.2361)],
)
def test_wilson_interval_known_values(k: int, n: int, lo: float, hi: float) -> None:
    got = wilson_interval(k, n)
    assert got == pytest.approx((lo, hi), abs=1e-3)


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
