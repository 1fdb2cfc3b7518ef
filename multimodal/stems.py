"""Modality stems: CT 3D patch embedding with 3D position encoding, EMR token embedding."""

from __future__ import annotations

import typing

import torch
from torch import Tensor, nn

from multimodal.config import CTStemConfig, EMRStemConfig
from multimodal.errors import ShapeError
from multimodal.layers import Conv3d, sinusoidal
from multimodal.transforms import block_stats


class RelPosBias3D(nn.Module):
    """Learned relative position bias over the (gz, gy, gx) patch grid: (H, N, N)."""

    def __init__(self, grid: tuple[int, int, int], heads: int) -> None:
        super().__init__()
        gz, gy, gx = grid
        self.table = nn.Parameter(torch.zeros((2 * gz - 1) * (2 * gy - 1) * (2 * gx - 1), heads))
        zz, yy, xx = torch.meshgrid(torch.arange(gz), torch.arange(gy), torch.arange(gx),
                                    indexing="ij")
        c = torch.stack([zz.flatten(), yy.flatten(), xx.flatten()])  # (3, N)
        d = c[:, :, None] - c[:, None, :]  # (3, N, N)
        idx = ((d[0] + gz - 1) * (2 * gy - 1) + (d[1] + gy - 1)) * (2 * gx - 1) + (d[2] + gx - 1)
        self.register_buffer("index", idx, persistent=False)

    def forward(self) -> Tensor:
        idx = typing.cast(Tensor, self.index)
        out: Tensor = self.table[idx].permute(2, 0, 1)  # (H, N, N)
        return out


def _groups(ch: int) -> int:
    return next(g for g in (8, 4, 2, 1) if ch % g == 0)


class CTStem(nn.Module):
    """(B, C, Z, Y, X) windowed CT -> (B, N, D) patch tokens (+ absolute 3D position).

    With ``cfg.conv_stem`` the patch embedding is preceded by strided 3 x 3 x 3 Conv3d +
    GroupNorm + GELU layers (a convolutional stem: local texture and density features before
    patchify); the patch grid is the same either way."""

    def __init__(self, cfg: CTStemConfig, dim: int, heads: int) -> None:
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = []
        cin = cfg.in_channels
        rem = list(cfg.stem_patch)
        for ch, st in zip(cfg.conv_stem, cfg.stem_strides(), strict=True):
            layers += [Conv3d(cin, ch, 3, stride=st, padding=1),
                       nn.GroupNorm(_groups(ch), ch), nn.GELU()]
            cin = ch
            rem = [r // s for r, s in zip(rem, st, strict=True)]
        self.conv = nn.Sequential(*layers)
        k = (rem[0], rem[1], rem[2])
        self.embed = Conv3d(cin, dim, kernel_size=k, stride=k)
        gz, gy, gx = cfg.patch_grid
        if cfg.abs_pos == "learned":
            self.pos = nn.Parameter(torch.zeros(1, cfg.n_patches, dim))
            nn.init.trunc_normal_(self.pos, std=0.02)
        else:
            # separable 3D sinusoid: a third of the channels per axis (remainder on z)
            dx = dy = (dim // 3) // 2 * 2
            dz = dim - dx - dy
            tab = torch.cat([
                sinusoidal(gz, dz)[:, None, None, :].expand(gz, gy, gx, dz),
                sinusoidal(gy, dy)[None, :, None, :].expand(gz, gy, gx, dy),
                sinusoidal(gx, dx)[None, None, :, :].expand(gz, gy, gx, dx)], dim=-1)
            self.register_buffer("pos", tab.reshape(1, cfg.n_patches, dim), persistent=False)
        self.rel = RelPosBias3D(cfg.patch_grid, heads) if cfg.rel_bias else None

    def forward(self, ct: Tensor) -> Tensor:
        return self.forward_map(ct)[0]

    def forward_map(self, ct: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C, Z, Y, X) -> patch tokens (B, N, D) and the first conv layer's map
        (B, C1, *cfg.dense_shape) (the pooled input itself without a conv stem)."""
        exp = (self.cfg.n_channels, *self.cfg.grid_shape)
        pooled = (self.cfg.in_channels, *self.cfg.pooled_shape)
        if ct.ndim == 5 and self.cfg.pooled and tuple(ct.shape[1:]) == pooled:
            pass  # already reduced (training stores the pooled volume: BlockPool)
        elif ct.ndim != 5 or tuple(ct.shape[1:]) != exp:
            raise ShapeError(f"CT must be (B, {exp}), got {tuple(ct.shape)}")
        else:
            ct = self.pool(ct)
        first: Tensor = self.conv[:3](ct)  # (B, C1, *dense_shape): conv, norm, GELU
        x: Tensor = self.embed(self.conv[3:](first)).flatten(2).transpose(1, 2)  # (B, N, D)
        pos = typing.cast(Tensor, self.pos)
        return x + pos, first

    def pool(self, ct: Tensor) -> Tensor:
        """(B, C, Z, Y, X) -> (B, C * len(pool_stats), Z/pz, Y/py, X/px): block statistics
        (window-major channel order); identity when ``pre_pool`` is (1, 1, 1)."""
        if not self.cfg.pooled:
            return ct
        return block_stats(ct, self.cfg.pre_pool, self.cfg.pool_stats)

    def bias(self) -> Tensor | None:
        """Relative position bias (H, N, N) for the shared encoder, or None."""
        return None if self.rel is None else self.rel()


class EMRStem(nn.Module):
    """(B, S) token ids of one segment -> (B, S, D) embeddings + in-segment position."""

    def __init__(self, cfg: EMRStemConfig, dim: int, segment_len: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab_size, dim)
        self.pos = nn.Parameter(torch.zeros(1, segment_len, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        nn.init.normal_(self.tok.weight, std=0.02)

    def forward(self, ids: Tensor) -> Tensor:
        if ids.ndim != 2 or ids.shape[1] > self.pos.shape[1]:
            raise ShapeError(f"EMR segment ids must be (B, <= {self.pos.shape[1]}), "
                             f"got {tuple(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.cfg.vocab_size):
            raise ShapeError("EMR token id outside the vocabulary")
        out: Tensor = self.tok(ids) + self.pos[:, : ids.shape[1]]
        return out
