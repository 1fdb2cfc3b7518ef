"""CPU inference fast path: block statistics by strided slices, oneDNN for single-case 3D
convolutions. Both must give the results of the stock operators they replace."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile

from multimodal.errors import ShapeError
from multimodal.layers import Conv3d
from multimodal.transforms import BlockPool, block_stats


def _stock_pool(x: torch.Tensor, k: tuple[int, int, int]) -> torch.Tensor:
    stats = [F.avg_pool3d(x, k), F.max_pool3d(x, k), -F.max_pool3d(-x, k)]
    return torch.stack(stats, 2).flatten(1, 2)


def _numpy_pool(a: np.ndarray, block: tuple[int, int, int]) -> np.ndarray:
    """(C, Z, Y, X) -> (C * 3, ...): mean, max, min by numpy ufunc reductions over the strided
    slices of each axis in turn (z, y, x): the training storage's reduction until stop 24."""
    outs = []
    for uf in (np.add, np.maximum, np.minimum):
        v = a
        for ax, b in zip((1, 2, 3), block, strict=True):
            if b > 1:
                v = uf.reduce([v[(slice(None),) * ax + (slice(i, None, b),)] for i in range(b)])
        outs.append(v / np.float32(np.prod(block)) if uf is np.add else v)
    c = a.shape[0]
    return np.stack(outs, 1).reshape(c * 3, *outs[0].shape[1:]).astype(np.float32)


@pytest.mark.parametrize("block", [(2, 2, 2), (1, 2, 2), (2, 1, 3), (1, 1, 1)])
def test_block_stats_match_the_pooling_operators_and_the_training_storage(
        block: tuple[int, int, int]) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 4, 6, 12, generator=g)
    out = block_stats(x, block, ("mean", "max", "min"))
    ref = _stock_pool(x, block)
    assert out.shape == ref.shape == (2, 9, 4 // block[0], 6 // block[1], 12 // block[2])
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    # max and min are exact; every value equals the numpy reduction the training storage
    # used until stop 24 (so the shipped model's training inputs are reproduced bit for bit)
    assert torch.equal(out[:, 1::3], ref[:, 1::3]) and torch.equal(out[:, 2::3], ref[:, 2::3])
    np.testing.assert_array_equal(out.numpy(), np.stack([_numpy_pool(a, block)
                                                         for a in x.numpy()]))
    pool = BlockPool(block, ("mean", "max", "min"))  # the storage transform uses block_stats
    np.testing.assert_array_equal(out.numpy(), np.stack([pool(a) for a in x.numpy()]))
    # channel order is window-major, and a subset of statistics keeps its order
    only = block_stats(x, block, ("min", "mean"))
    assert torch.equal(only[:, 0::2], out[:, 2::3]) and torch.equal(only[:, 1::2], out[:, 0::3])


def test_block_stats_reject_bad_shapes_and_statistics() -> None:
    with pytest.raises(ShapeError, match="divisible"):
        block_stats(torch.zeros(1, 1, 3, 4, 4), (2, 2, 2), ("mean",))
    with pytest.raises(ShapeError, match="divisible"):
        block_stats(torch.zeros(4, 4, 4), (2, 2, 2), ("mean",))
    with pytest.raises(ShapeError, match="median"):
        block_stats(torch.zeros(1, 1, 4, 4, 4), (2, 2, 2), ("median",))
    with pytest.raises(ShapeError, match="use mean, max, min"):
        block_stats(torch.zeros(1, 1, 4, 4, 4), (2, 2, 2), ())


def _conv_ops(fn: object) -> set[str]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()  # type: ignore[operator]
    return {e.key for e in prof.key_averages() if "conv" in e.key}


def test_conv3d_runs_one_case_through_onednn_with_the_stock_result() -> None:
    if not torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]
        pytest.skip("this torch build has no oneDNN")  # the stock path is then used
    torch.manual_seed(0)
    fast = Conv3d(16, 8, 3, padding=1)
    stock = nn.Conv3d(16, 8, 3, padding=1)
    stock.load_state_dict(fast.state_dict())  # same parameter names
    x = torch.randn(1, 16, 8, 16, 16)  # N*C*D*H = 2,048: PyTorch's own pick is slow_conv3d
    with torch.no_grad():
        torch.testing.assert_close(fast(x), stock(x), rtol=1e-4, atol=1e-5)
        assert "aten::mkldnn_convolution" in _conv_ops(lambda: fast(x))
        assert "aten::mkldnn_convolution" not in _conv_ops(lambda: stock(x))
        # a batch above one keeps the stock dispatch (PyTorch already picks oneDNN there)
        xb = torch.randn(2, 16, 8, 16, 16)
        torch.testing.assert_close(fast(xb), stock(xb), rtol=1e-4, atol=1e-5)
    # with autograd on (training) the stock path runs
    xa = x.clone().requires_grad_()
    assert "aten::mkldnn_convolution" not in _conv_ops(lambda: fast(xa))
    fast(xa).square().sum().backward()
    assert xa.grad is not None and fast.weight.grad is not None


def test_conv3d_keeps_the_stock_path_for_pointwise_kernels_and_onnx_export(tmp_path: Path
                                                                         ) -> None:
    point = Conv3d(8, 4, 1)
    x = torch.randn(1, 8, 4, 8, 8)
    with torch.no_grad():
        assert "aten::mkldnn_convolution" not in _conv_ops(lambda: point(x))
        out = tmp_path / "conv.onnx"
        torch.onnx.export(Conv3d(8, 4, 3, padding=1).eval(), (x,), str(out), dynamo=False)
    assert b"Conv" in out.read_bytes()
