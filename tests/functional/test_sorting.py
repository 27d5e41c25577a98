"""``sort_rows``: exactly the values of ``torch.sort``, in threads and in place."""

from __future__ import annotations

import pytest
import torch

from gan_dissect_callbacks.functional.sorting import sort_rows


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("shape", [(5, 7, 300), (700, 1600)])  # the second is sorted in parallel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sort_rows_gives_exactly_the_values_of_torch_sort(
    dtype: torch.dtype, shape: tuple[int, ...], threads: int
) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g).to(dtype)
    x[..., :40] = x[..., 40:80].round()  # ties, and signed zeros
    x.view(-1)[:3] = torch.tensor([0.0, -0.0, 0.0], dtype=dtype)
    before, kept = torch.get_num_threads(), x.clone()
    torch.set_num_threads(threads)
    try:
        got = sort_rows(x)
        strided = x.transpose(0, -1)  # not contiguous
        got_strided = sort_rows(strided)
    finally:
        torch.set_num_threads(before)
    assert got.dtype == dtype
    assert torch.equal(got, x.sort(dim=-1).values)
    assert torch.equal(got_strided, strided.sort(dim=-1).values)
    assert torch.equal(x, kept)  # the input is left as it was


def test_sort_rows_in_place_sorts_the_tensor_itself_and_copies_otherwise() -> None:
    x = torch.randn(5, 300, generator=torch.Generator().manual_seed(0))
    expected = x.sort(dim=-1).values
    assert torch.equal(sort_rows(x), expected) and not torch.equal(x, expected)  # x untouched
    same = sort_rows(x, inplace=True)
    assert same is x and torch.equal(x, expected)
    y = torch.randn(300, 5, generator=torch.Generator().manual_seed(1))
    view = y.T  # not contiguous: sorted into a copy, the view left as it was
    before = view.clone()
    assert torch.equal(sort_rows(view, inplace=True), before.sort(dim=-1).values)
    assert torch.equal(view, before)
