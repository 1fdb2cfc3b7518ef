"""Attention, MLP and Transformer blocks (pre-norm; fused scaled_dot_product_attention)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` that runs a single CPU float32 case through oneDNN (mkldnn) at inference
    (no autograd).

    PyTorch picks its native ``slow_conv3d`` for a batch of one whose ``N * C * D * H`` is at
    most 20,480 elements (the dense detector's and the later stem layers' maps at inference).
    All of the stem's and the dense detector's convolutions of one case took 0.0128 s with
    PyTorch's pick against 0.0027 s with this one here (``python bench/model.py --only
    latency``: ``native_conv_s``, ``conv_s``). Anything with autograd on (training, which
    this was not measured for), batches above one (batched drafting: PyTorch picks oneDNN
    itself), 1 x 1 x 1 kernels (faster natively), other devices and dtypes, and ONNX export
    keep the stock path. Parameter names and results (to float rounding) are those of
    ``nn.Conv3d``."""

    def forward(self, x: Tensor) -> Tensor:
        if (not torch.is_grad_enabled() and not torch.onnx.is_in_onnx_export()
                and x.ndim == 5 and x.shape[0] == 1
                and x.device.type == "cpu" and x.dtype == torch.float32
                and self.weight.dtype == torch.float32 and self.padding_mode == "zeros"
                and isinstance(self.padding, tuple) and self.kernel_size != (1, 1, 1)
                and torch.backends.mkldnn.is_available()):  # type: ignore[no-untyped-call]
            out: Tensor = torch.ops.aten.mkldnn_convolution(
                x.contiguous(), self.weight, self.bias, list(self.padding), list(self.stride),
                list(self.dilation), self.groups)
            return out
        return super().forward(x)


def attn_bias(mask: Tensor | None, bias: Tensor | None) -> Tensor | None:
    """Combine a boolean keep-mask and an additive float bias into one SDPA float mask."""
    if mask is None:
        return bias
    neg = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    neg = neg.masked_fill(~mask, float("-inf"))
    return neg if bias is None else neg + bias


class Attention(nn.Module):
    """Multi-head attention; ``kv`` given -> cross-attention."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout

    def split(self, x: Tensor) -> Tensor:
        b, n, d = x.shape  # (B, N, D) -> (B, H, N, D/H)
        return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)

    def project_kv(self, src: Tensor) -> tuple[Tensor, Tensor]:
        k, v = self.kv(src).chunk(2, dim=-1)
        return self.split(k), self.split(v)

    def attend(self, x: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None,
               is_causal: bool = False) -> Tensor:
        q = self.split(self.q(x))
        p = self.dropout if self.training else 0.0
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p,
                                           is_causal=is_causal)
        b, h, n, dh = o.shape
        out: Tensor = self.proj(o.transpose(1, 2).reshape(b, n, h * dh))
        return out

    def forward(self, x: Tensor, kv: Tensor | None = None, mask: Tensor | None = None,
                is_causal: bool = False) -> Tensor:
        k, v = self.project_kv(x if kv is None else kv)
        return self.attend(x, k, v, mask, is_causal)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc2(self.drop(F.gelu(self.fc1(x))))
        return out


class Block(nn.Module):
    """Pre-norm self-attention + MLP block (the shared encoder's unit)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.n1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.n2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.n1(x), mask=mask)
        out: Tensor = x + self.mlp(self.n2(x))
        return out


def sinusoidal(n: int, dim: int) -> Tensor:
    """(n, dim) sinusoidal position table."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    i = torch.arange(0, dim, 2, dtype=torch.float32)
    ang = pos / (10000.0 ** (i / dim))
    out = torch.zeros(n, dim)
    out[:, 0::2] = torch.sin(ang)
    out[:, 1::2] = torch.cos(ang[:, : dim // 2])
    return out
