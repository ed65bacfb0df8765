"""OpenCLIP text towers (ViT-bigG-14 for SDXL, ViT-H-14 for SD 2.x) and the ViT-H-14 image tower
(SVD / SV3D / SV4D), in open_clip's key layout (sgm `FrozenOpenCLIPEmbedder`,
`FrozenOpenCLIPEmbedder2`, `FrozenOpenCLIPImageEmbedder`, `FrozenOpenCLIPImagePredictionEmbedder`).

Written here rather than built from open_clip's classes: those register the causal mask as a
non-persistent buffer, which stays on the meta device after `load_state_dict(assign=True)`, and
open_clip changed its residual stream from (L, N, D) to (N, L, D) in 2.26. These modules keep
the exact keys (`transformer.resblocks.N.attn.in_proj_weight` ...), hold no buffers, run
batch-first and use SDPA (`is_causal=True` for text). Math as open_clip 2.24: pre-LN blocks,
exact GELU, LayerNorm eps 1e-5, q/k/v stacked in that order in `in_proj_weight`.

Text outputs (sgm semantics):
* legacy=True (SD 2.x; FrozenOpenCLIPEmbedder): ln_final(x[layer]); "penultimate" = the input of
  the last block. No pooled output.
* legacy=False (SDXL; FrozenOpenCLIPEmbedder2): x[layer] WITHOUT ln_final; pooled =
  ln_final(last)[argmax(ids)] @ text_projection (open_clip pads with 0, so argmax is the <end>).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from gm.errors import PresetError
from gm.models.prompt import chunk_count, encode_chunks, tokenize_prompts
from gm.models.tokenizer import Tokenized, tokenize

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class MultiheadSelfAttention(nn.Module):
    """nn.MultiheadAttention's parameters (in_proj_weight/in_proj_bias/out_proj) over SDPA."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.zeros(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        b, n, d = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # (B, N, 3D)
        q, k, v = qkv.view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # (B, H, N, d/H)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))  # (B, N, D)


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(dim, hidden)
        self.c_proj = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_width: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = MultiheadSelfAttention(dim, heads)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_width)

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), causal)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_width: int) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads, mlp_width) for _ in range(layers))


@dataclass(frozen=True, kw_only=True)
class OpenCLIPTextConfig:
    """`[[conditioner]] kind = "openclip_text"`. Defaults: ViT-H-14 text tower as SD 2.x uses it.

    SDXL's ViT-bigG-14: width 1280, layers 32, heads 20, embed_dim 1280, legacy false,
    pooled_output "vector".
    """

    input: str = "txt"
    output: str = "crossattn"
    pooled_output: str | None = None  # "vector" = sgm always_return_pooled (needs legacy false)
    ucg_rate: float = 0.0
    legacy_ucg_value: str | float | None = None
    is_trainable: bool = False
    zero_in_uc: bool = False
    vocab_size: int = 49408
    context_length: int = 77
    width: int = 1024
    layers: int = 24
    heads: int = 16
    embed_dim: int = 1024
    layer: Literal["last", "penultimate"] = "penultimate"
    legacy: bool = True


class OpenCLIPTextModel(nn.Module):
    """open_clip `CLIP` with `visual` deleted: the keys under `embedders.N.model.`."""

    def __init__(self, cfg: OpenCLIPTextConfig) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.zeros(cfg.context_length, cfg.width))
        self.transformer = Transformer(cfg.width, cfg.layers, cfg.heads, 4 * cfg.width)
        self.ln_final = nn.LayerNorm(cfg.width)
        self.text_projection = nn.Parameter(torch.zeros(cfg.width, cfg.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))


class OpenCLIPTextEmbedder(nn.Module):
    """Prompts (or open_clip ids) -> [crossattn part] (+ [pooled vector])."""

    def __init__(self, config: OpenCLIPTextConfig) -> None:
        super().__init__()
        if config.pooled_output is not None and config.legacy:
            raise PresetError("openclip_text: pooled_output needs legacy = false (as in sgm)")
        self.config = config
        self.model = OpenCLIPTextModel(config)

    def outputs(self) -> tuple[str, ...]:
        cfg = self.config
        return (cfg.output,) if cfg.pooled_output is None else (cfg.output, cfg.pooled_output)

    def chunk_count(self, texts: Sequence[str]) -> int:
        """77-token windows the longest of `texts` needs (raises on a <lora:...> tag)."""
        return chunk_count(texts, "open_clip")

    def tokenize(self, texts: Sequence[str]) -> Tokenized:
        return tokenize(texts, "open_clip", self.config.context_length)

    def forward(
        self, text: Sequence[str] | torch.Tensor, generator: torch.Generator | None = None, chunks: int = 1
    ) -> list[torch.Tensor]:
        """`text`: prompts in A1111 syntax (gm.models.prompt), or (B, k * 77) open_clip ids; windows
        of 77 as in CLIPTextEmbedder.forward. `generator` is unused (no noise)."""
        if isinstance(text, torch.Tensor):
            ids, weights = text, None
        else:
            tokens = tokenize_prompts(text, "open_clip", chunks)
            ids, weights = tokens.ids, (tokens.weights if tokens.weighted else None)
        main, pooled = encode_chunks(self._encode, ids, weights)
        return [main] if pooled is None else [main, pooled]  # (B, L, D), (B, embed_dim)

    def _encode(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(N, 77) ids -> (the configured layer, final LN applied when legacy; pooled or None)."""
        cfg, m = self.config, self.model
        ids = ids.to(m.token_embedding.weight.device)
        x = m.token_embedding(ids) + m.positional_embedding  # (N, L, D)
        blocks = m.transformer.resblocks
        need_last = cfg.layer == "last" or cfg.pooled_output is not None
        penultimate = x
        for i, block in enumerate(blocks):
            if i == len(blocks) - 1:
                penultimate = x  # the input of the last block
                if not need_last:
                    break
            x = block(x, causal=True)
        taken = penultimate if cfg.layer == "penultimate" else x
        if cfg.legacy:
            return m.ln_final(taken), None
        if cfg.pooled_output is None:
            return taken, None
        last = m.ln_final(x)
        pooled = last[torch.arange(last.shape[0], device=ids.device), ids.argmax(dim=-1)] @ m.text_projection
        return taken, pooled


@dataclass(frozen=True, kw_only=True)
class OpenCLIPImageConfig:
    """`[[conditioner]] kind = "openclip_image"`. Defaults: ViT-H-14 (laion2b_s32b_b79k) as SVD uses it.

    The text-side fields only size the unused tensors that the release files keep.
    """

    input: str = "cond_frames_without_noise"
    output: str = "crossattn"
    ucg_rate: float = 0.0
    legacy_ucg_value: str | float | None = None
    is_trainable: bool = False
    zero_in_uc: bool = True  # video models: uc zeroes the image conditioning
    n_cond_frames: int = 1
    n_copies: int = 1
    image_size: int = 224
    patch_size: int = 14
    width: int = 1280
    layers: int = 32
    head_width: int = 80
    mlp_ratio: float = 4.0
    embed_dim: int = 1024
    vocab_size: int = 49408
    context_length: int = 77
    text_width: int = 1024


class VisionTransformer(nn.Module):
    """open_clip VisionTransformer: patch conv -> [CLS] + positions -> ln_pre -> blocks -> ln_post(CLS) @ proj."""

    def __init__(self, cfg: OpenCLIPImageConfig) -> None:
        super().__init__()
        grid = cfg.image_size // cfg.patch_size
        self.conv1 = nn.Conv2d(3, cfg.width, cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(cfg.width))
        self.positional_embedding = nn.Parameter(torch.zeros(grid * grid + 1, cfg.width))
        self.ln_pre = nn.LayerNorm(cfg.width)
        heads = cfg.width // cfg.head_width
        self.transformer = Transformer(cfg.width, cfg.layers, heads, int(cfg.width * cfg.mlp_ratio))
        self.ln_post = nn.LayerNorm(cfg.width)
        self.proj = nn.Parameter(torch.zeros(cfg.width, cfg.embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)  # (B, W, g, g)
        x = x.flatten(2).transpose(1, 2)  # (B, g*g, W)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # (B, 1, W)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)  # (B, 1+g*g, W)
        x = self.ln_pre(x)
        for block in self.transformer.resblocks:
            x = block(x, causal=False)
        return self.ln_post(x[:, 0]) @ self.proj  # (B, embed_dim), not L2-normalised


class OpenCLIPImageModel(nn.Module):
    """open_clip `CLIP` with the text `transformer` deleted (sgm keeps the other text tensors)."""

    def __init__(self, cfg: OpenCLIPImageConfig) -> None:
        super().__init__()
        self.visual = VisionTransformer(cfg)
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.text_width)
        self.positional_embedding = nn.Parameter(torch.zeros(cfg.context_length, cfg.text_width))
        self.ln_final = nn.LayerNorm(cfg.text_width)
        self.text_projection = nn.Parameter(torch.zeros(cfg.text_width, cfg.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))


def _gaussian_blur(x: torch.Tensor, kernel: tuple[int, int], sigma: tuple[float, float]) -> torch.Tensor:
    """kornia gaussian_blur2d: separable normalised Gaussians, 'reflect' borders, odd kernels."""
    c = x.shape[1]
    for dim, (k, s) in enumerate(zip(kernel, sigma)):
        t = torch.arange(k, device=x.device, dtype=x.dtype) - k // 2
        g = torch.exp(-(t**2) / (2 * s**2))
        g = g / g.sum()
        if dim == 0:  # along H
            x = F.pad(x, (0, 0, k // 2, k // 2), mode="reflect")
            x = F.conv2d(x, g.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)
        else:  # along W
            x = F.pad(x, (k // 2, k // 2, 0, 0), mode="reflect")
            x = F.conv2d(x, g.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
    return x


def clip_preprocess(x: torch.Tensor, size: int = 224) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> CLIP input (B, 3, size, size), exactly as sgm does it.

    kornia.geometry.resize(bicubic, align_corners=True, antialias=True) squashes to size x size
    (no crop); antialiasing blurs with sigma (factor-1)/2 only when downscaling. Then [-1,1] ->
    [0,1] and CLIP mean/std normalisation.
    """
    h, w = x.shape[-2:]
    if (h, w) != (size, size):
        factors = (h / size, w / size)
        if max(factors) > 1:
            sigma = (max((factors[0] - 1) / 2, 0.001), max((factors[1] - 1) / 2, 0.001))
            kernel = tuple(int(max(4 * s, 3)) for s in sigma)
            kernel = (kernel[0] + 1 - kernel[0] % 2, kernel[1] + 1 - kernel[1] % 2)  # odd
            x = _gaussian_blur(x, kernel, sigma)
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=True)
    x = (x + 1.0) / 2.0
    mean = torch.tensor(CLIP_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


class OpenCLIPImageWrapper(nn.Module):
    """sgm FrozenOpenCLIPImageEmbedder: only exists so that keys read `open_clip.model.*`."""

    def __init__(self, cfg: OpenCLIPImageConfig) -> None:
        super().__init__()
        self.model = OpenCLIPImageModel(cfg)


class OpenCLIPImageEmbedder(nn.Module):
    """Images (B*n_cond_frames, 3, H, W) in [-1, 1] -> crossattn (B*n_copies, n_cond_frames, embed_dim)."""

    def __init__(self, config: OpenCLIPImageConfig) -> None:
        super().__init__()
        self.config = config
        self.open_clip = OpenCLIPImageWrapper(config)

    def outputs(self) -> tuple[str, ...]:
        return (self.config.output,)

    def forward(self, image: torch.Tensor, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """`generator` is unused (no noise on this branch: it sees the clean image)."""
        cfg = self.config
        visual = self.open_clip.model.visual
        x = clip_preprocess(image.to(visual.conv1.weight.device), cfg.image_size)
        z = visual(x.to(visual.conv1.weight.dtype)).to(image.dtype)  # (B*T, D)
        z = z.view(-1, cfg.n_cond_frames, z.shape[-1])  # (B, T, D)
        return [z.repeat_interleave(cfg.n_copies, dim=0)]  # (B*n_copies, T, D)
