"""UNet residual block, down- and upsampling (sgm `diffusionmodules/openaimodel.py` ResBlock,
Downsample, Upsample).

ResBlock: in_layers = [GroupNorm32(eps 1e-5), SiLU, conv]; emb_layers = [SiLU, Linear] added per
channel; out_layers = [GroupNorm32, SiLU, Dropout, conv]; skip_connection = Identity or a 1x1 conv.
With `dims=3` (the video `time_stack`) the convs are 3-D with a (3, 1, 1) kernel zero-padded in
time, and the per-frame embedding (b, t, E) is broadcast as (b, C, t, 1, 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gm.nn.blocks import Cond, CondModule
from gm.nn.norm import group_norm


def conv_nd(
    dims: int, cin: int, cout: int, kernel: int | tuple[int, ...], stride: int = 1, padding: int = 0
) -> nn.Module:
    """Conv2d or Conv3d; a tuple kernel is zero-padded by k // 2 on each axis."""
    pad: int | tuple[int, ...] = padding
    if isinstance(kernel, tuple):
        pad = tuple(k // 2 for k in kernel)
    if dims == 2:
        return nn.Conv2d(cin, cout, kernel, stride=stride, padding=pad)
    if dims == 3:
        return nn.Conv3d(cin, cout, kernel, stride=stride, padding=pad)
    raise ValueError(f"unsupported dims {dims}")


class ResBlock(CondModule):
    """Residual block conditioned on the time embedding (no embedding when `skip_t_emb`)."""

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        out_channels: int | None = None,
        dropout: float = 0.0,
        dims: int = 2,
        kernel_size: int | tuple[int, ...] = 3,
        skip_t_emb: bool = False,
    ) -> None:
        super().__init__()
        out_channels = out_channels or channels
        padding = 1 if isinstance(kernel_size, int) else 0
        self.in_layers = nn.Sequential(
            group_norm(channels),
            nn.SiLU(),
            conv_nd(dims, channels, out_channels, kernel_size, padding=padding),
        )
        self.emb_layers = (
            None if skip_t_emb else nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        )
        self.out_layers = nn.Sequential(
            group_norm(out_channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            conv_nd(dims, out_channels, out_channels, kernel_size, padding=padding),
        )
        self.skip_connection = (
            nn.Identity() if out_channels == channels else conv_nd(dims, channels, out_channels, 1)
        )

    def residual(self, x: torch.Tensor, emb: torch.Tensor | None) -> torch.Tensor:
        """x (B, C, H, W) with emb (B, E); or x (b, C, t, H, W) with emb (b, t, E) or None."""
        h = self.in_layers(x)
        if self.emb_layers is not None and emb is not None:
            e = self.emb_layers(emb).to(h.dtype)
            if h.ndim == 5:
                e = e.transpose(1, 2)[..., None, None]  # (b, t, C) -> (b, C, t, 1, 1)
            else:
                e = e[..., None, None]  # (B, C, 1, 1)
            h = h + e
        return self.skip_connection(x) + self.out_layers(h)

    def forward(self, x: torch.Tensor, cond: Cond) -> torch.Tensor:
        return self.residual(x, cond.emb)


class Downsample(nn.Module):
    """3x3 conv, stride 2, symmetric padding 1 (key `op`)."""

    def __init__(self, channels: int, out_channels: int | None = None) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest x2 then 3x3 conv (key `conv`); shared by the UNet and the VAE decoder."""

    def __init__(self, channels: int, out_channels: int | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class ResnetBlock(nn.Module):
    """Autoencoder residual block (sgm `diffusionmodules/model.py` ResnetBlock, no time embedding):
    norm1, swish, conv1, norm2, swish, dropout, conv2 (+ 1x1 nin_shortcut when channels change)."""

    def __init__(self, in_channels: int, out_channels: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        out_channels = out_channels or in_channels
        self.norm1 = group_norm(in_channels, eps=1e-6)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels, eps=1e-6)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        skip = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return skip + h


class EncoderDownsample(nn.Module):
    """Autoencoder downsampling: zero-pad right/bottom by one, then 3x3 conv stride 2 (key `conv`)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))
