"""phaseflip's CPU attention: grouped-query heads read in place, one-query steps as two small matmuls."""

import pytest
import torch
import torch.nn.functional as F

from phaseflip.model.attention import sdpa_gqa_attention


def _inputs(dtype: torch.dtype, rows: int = 5, queries: int = 1, length: int = 13):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(rows, 6, queries, 8, generator=gen).to(dtype)
    k = torch.randn(rows, 2, length, 8, generator=gen).to(dtype)
    v = torch.randn(rows, 2, length, 8, generator=gen).to(dtype)
    mask = torch.ones(rows, 1, queries, length, dtype=torch.bool)
    mask[1, ..., :4] = False  # a left-padded row
    mask[3, ..., :9] = False
    return q, k, v, mask


@pytest.mark.parametrize(("dtype", "atol"), [(torch.float32, 1e-6), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("mask_kind", ["bool", "additive", "none"])
def test_one_query_step_equals_the_sdpa_kernel(dtype: torch.dtype, atol: float, mask_kind: str) -> None:
    q, k, v, mask = _inputs(dtype)
    given: torch.Tensor | None = mask
    if mask_kind == "additive":
        given = torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, torch.finfo(dtype).min)
    elif mask_kind == "none":
        given = None
    want = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=None if given is None else mask,
                                          scale=0.3, enable_gqa=True).transpose(1, 2)
    with torch.no_grad():
        got, _ = sdpa_gqa_attention(torch.nn.Module(), q, k, v, given, scaling=0.3)
    assert got.shape == (5, 1, 6, 8) and got.dtype == dtype
    assert torch.allclose(got.float(), want, atol=atol)


def test_several_queries_keep_the_kernel_path() -> None:
    q, k, v, mask = _inputs(torch.float32, queries=4)
    mask = mask & torch.ones(4, 13, dtype=torch.bool).tril(9)  # causal, with 9 cached positions
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True).transpose(1, 2)
    got, _ = sdpa_gqa_attention(torch.nn.Module(), q, k, v, mask)
    assert torch.allclose(got, want, atol=1e-6)
