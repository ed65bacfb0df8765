"""The image UNet of SD 2.x / SDXL / the training recipes (sgm `diffusionmodules/openaimodel.py`
`UNetModel`).

Layout (module names are the checkpoint keys under `model.diffusion_model.`):
  time_embed (+ label_emb) -> input_blocks[0] = conv_in; per level `num_res_blocks` x
  [ResBlock (+ SpatialTransformer if 2**level in attention_resolutions)], a Downsample after every
  level but the last -> middle_block = ResBlock, SpatialTransformer(depth = last level's depth),
  ResBlock -> output_blocks: levels reversed, num_res_blocks + 1 blocks each, input = cat([h, skip])
  (current features first), an Upsample on the last block of every level but level 0 -> out.
The video UNet subclasses this and swaps the two block builders (`make_resblock`,
`make_transformer`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from gm.errors import PresetError
from gm.nn.blocks import BlockSequence, Cond
from gm.nn.embeddings import Timestep, embed_mlp, timestep_embedding
from gm.nn.norm import group_norm
from gm.nn.resblock import Downsample, ResBlock, Upsample
from gm.nn.transformer import SpatialTransformer


@dataclass(frozen=True)
class UNetConfig:
    """`UNetModel` hyper-parameters, named as in the sgm YAML `network_config.params`."""

    in_channels: int
    out_channels: int
    model_channels: int
    num_res_blocks: int | tuple[int, ...]
    attention_resolutions: tuple[int, ...]
    channel_mult: tuple[int, ...] = (1, 2, 4, 8)
    num_heads: int = -1  # heads per transformer when num_head_channels is -1
    num_head_channels: int = -1  # fixed width per head (heads = channels // width); wins if set
    transformer_depth: int | tuple[int, ...] = 1  # per level; the middle block uses the last entry
    transformer_depth_middle: int | None = None
    # The SDXL refiner YAML gives one (equal) entry per transformer block; any equal list is accepted.
    context_dim: int | tuple[int, ...] | None = None
    num_classes: int | Literal["sequential", "continuous", "timestep"] | None = None
    adm_in_channels: int | None = None  # width of the vector y when num_classes == "sequential"
    use_linear_in_transformer: bool = False
    disable_middle_transformer: bool = False
    dropout: float = 0.0
    use_checkpoint: bool = False  # gradient checkpointing during training only
    # Accepted for line-by-line parity with the YAML; every value is the same SDPA math here.
    spatial_transformer_attn_type: Literal["softmax", "softmax-xformers"] = "softmax"

    def __post_init__(self) -> None:
        if self.num_heads == -1 and self.num_head_channels == -1:
            raise PresetError("network: set num_heads or num_head_channels")
        levels = len(self.channel_mult)
        for name in ("num_res_blocks", "transformer_depth"):
            value = getattr(self, name)
            if isinstance(value, tuple) and len(value) != levels:
                raise PresetError(f"network.{name}: expected {levels} values (one per channel_mult level)")
        if isinstance(self.context_dim, tuple) and len(set(self.context_dim)) != 1:
            raise PresetError("network.context_dim: a list must repeat one value")
        if self.num_classes == "sequential" and self.adm_in_channels is None:
            raise PresetError("network: num_classes = 'sequential' needs adm_in_channels")

    def res_blocks(self, level: int) -> int:
        n = self.num_res_blocks
        return n[level] if isinstance(n, tuple) else n

    def depth(self, level: int) -> int:
        d = self.transformer_depth
        return d[level] if isinstance(d, tuple) else d

    @property
    def middle_depth(self) -> int:
        if self.transformer_depth_middle is not None:
            return self.transformer_depth_middle
        return self.depth(len(self.channel_mult) - 1)

    @property
    def context_width(self) -> int | None:
        c = self.context_dim
        return c[0] if isinstance(c, tuple) else c

    def heads(self, channels: int) -> tuple[int, int]:
        """(number of heads, width per head) for a transformer on `channels` channels."""
        if self.num_head_channels == -1:
            return self.num_heads, channels // self.num_heads
        return channels // self.num_head_channels, self.num_head_channels


class UNet(nn.Module):
    """Denoising UNet: `forward(x, timesteps, context, y) -> same shape as x with out_channels`."""

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        mc = cfg.model_channels
        emb_dim = 4 * mc
        self.time_embed = embed_mlp(mc, emb_dim, emb_dim)
        if cfg.num_classes == "sequential":
            assert cfg.adm_in_channels is not None
            self.label_emb: nn.Module = nn.Sequential(embed_mlp(cfg.adm_in_channels, emb_dim, emb_dim))
        elif cfg.num_classes == "continuous":
            self.label_emb = nn.Linear(1, emb_dim)
        elif cfg.num_classes == "timestep":
            self.label_emb = nn.Sequential(Timestep(mc), embed_mlp(mc, emb_dim, emb_dim))
        elif isinstance(cfg.num_classes, int):
            self.label_emb = nn.Embedding(cfg.num_classes, emb_dim)

        ckpt = cfg.use_checkpoint
        self.input_blocks = nn.ModuleList([BlockSequence(nn.Conv2d(cfg.in_channels, mc, 3, padding=1))])
        skip_channels = [mc]
        ch, ds = mc, 1
        last = len(cfg.channel_mult) - 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.res_blocks(level)):
                layers = [self.make_resblock(ch, mult * mc)]
                ch = mult * mc
                if ds in cfg.attention_resolutions:
                    layers.append(self.make_transformer(ch, cfg.depth(level)))
                self.input_blocks.append(BlockSequence(*layers, use_checkpoint=ckpt))
                skip_channels.append(ch)
            if level != last:
                self.input_blocks.append(BlockSequence(Downsample(ch)))
                skip_channels.append(ch)
                ds *= 2

        middle_attn = (
            nn.Identity() if cfg.disable_middle_transformer else self.make_transformer(ch, cfg.middle_depth)
        )
        self.middle_block = BlockSequence(
            self.make_resblock(ch, ch), middle_attn, self.make_resblock(ch, ch), use_checkpoint=ckpt
        )

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.res_blocks(level) + 1):
                layers = [self.make_resblock(ch + skip_channels.pop(), mc * mult)]
                ch = mc * mult
                if ds in cfg.attention_resolutions:
                    layers.append(self.make_transformer(ch, cfg.depth(level)))
                if level and i == cfg.res_blocks(level):
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(BlockSequence(*layers, use_checkpoint=ckpt))

        self.out = nn.Sequential(group_norm(ch), nn.SiLU(), nn.Conv2d(mc, cfg.out_channels, 3, padding=1))

    # -- block builders (overridden by the video UNet) --------------------------------------------
    def make_resblock(self, channels: int, out_channels: int) -> nn.Module:
        return ResBlock(channels, 4 * self.cfg.model_channels, out_channels, dropout=self.cfg.dropout)

    def make_transformer(self, channels: int, depth: int) -> nn.Module:
        heads, dim_head = self.cfg.heads(channels)
        return SpatialTransformer(
            channels,
            heads,
            dim_head,
            depth=depth,
            context_dim=self.cfg.context_width,
            use_linear=self.cfg.use_linear_in_transformer,
            dropout=self.cfg.dropout,
        )

    # -- forward ----------------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.time_embed[0].weight.dtype

    def embed(self, timesteps: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """Time embedding (+ label/vector embedding): (B,) and (B, adm) -> (B, 4*model_channels)."""
        if (y is None) != (self.cfg.num_classes is None):
            raise ValueError("y must be given exactly when the network is class/vector-conditional")
        emb = self.time_embed(timestep_embedding(timesteps, self.cfg.model_channels).to(self.dtype))
        if y is not None:
            emb = emb + self.label_emb(y if isinstance(self.label_emb, nn.Embedding) else y.to(self.dtype))
        return emb

    def run(self, x: torch.Tensor, cond: Cond) -> torch.Tensor:
        """The UNet body on x already in the network dtype."""
        skips = []
        h = x
        for block in self.input_blocks:
            h = block(h, cond)
            skips.append(h)
        h = self.middle_block(h, cond)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), cond)
        return self.out(h)

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, in, H, W), timesteps (B,), context (B, M, ctx), y (B, adm) or (B,) labels."""
        cond = Cond(
            emb=self.embed(timesteps, y),
            context=None if context is None else context.to(self.dtype),
        )
        return self.run(x.to(self.dtype), cond).to(x.dtype)
