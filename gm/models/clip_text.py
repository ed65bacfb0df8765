"""CLIP ViT-L/14 text encoder in the HF `CLIPTextModel` key layout (sgm `FrozenCLIPEmbedder`).

Keys under the embedder: `transformer.text_model.embeddings.{token,position}_embedding`,
`transformer.text_model.encoder.layers.N.{self_attn.{q,k,v,out}_proj, layer_norm1, mlp.fc1,
mlp.fc2, layer_norm2}`, `transformer.text_model.final_layer_norm`. Pre-LN blocks, quick_gelu,
causal self-attention (no padding mask: padded <end> tokens are attended causally, as HF does
when sgm passes no attention mask).

Outputs by `layer` (sgm names):
* "hidden": hidden_states[layer_idx] = the residual stream after `layer_idx` blocks, NO final LN.
  SDXL uses layer_idx 11 of 12 (the penultimate block's output).
* "last": final_layer_norm(output of the last block) (training config txt2img-clipl).
* "pooled": the pooled vector as a length-1 sequence.
`pooled_output` additionally returns pooler_output = final_layer_norm(last)[argmax(ids)]: the
released config's legacy eos_token_id=2 makes HF pool at the argmax id, i.e. the first <end>.

Released SDXL files may carry `...embeddings.position_ids` (a persistent buffer in transformers
4.19); here positions are computed, so that key is not part of the module (the loader skips it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from gm.models.prompt import chunk_count, encode_chunks, tokenize_prompts
from gm.models.tokenizer import Tokenized, tokenize


@dataclass(frozen=True, kw_only=True)
class CLIPTextConfig:
    """`[[conditioner]] kind = "clip_l_text"`: HF CLIP text config names + sgm embedder params.

    Defaults are openai/clip-vit-large-patch14 with SDXL's layer choice (hidden_states[11]).
    """

    input: str = "txt"
    output: str = "crossattn"
    pooled_output: str | None = None  # "vector" = sgm always_return_pooled
    ucg_rate: float = 0.0
    legacy_ucg_value: str | float | None = None
    is_trainable: bool = False
    zero_in_uc: bool = False  # SDXL base: uc zeroes the text embeddings
    vocab_size: int = 49408
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_position_embeddings: int = 77
    layer_norm_eps: float = 1e-5
    layer: Literal["last", "pooled", "hidden"] = "hidden"
    layer_idx: int = 11


class CLIPAttention(nn.Module):
    """Multi-head causal self-attention with separate q/k/v/out projections (all with bias)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = (
            proj(x).view(b, n, self.heads, d // self.heads).transpose(1, 2)  # (B, H, N, d/H)
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))  # (B, N, D)


class CLIPMLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        return self.fc2(h * torch.sigmoid(1.702 * h))  # quick_gelu


class CLIPEncoderLayer(nn.Module):
    def __init__(self, cfg: CLIPTextConfig) -> None:
        super().__init__()
        self.self_attn = CLIPAttention(cfg.hidden_size, cfg.num_attention_heads)
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = CLIPMLP(cfg.hidden_size, cfg.intermediate_size)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Module):
    def __init__(self, cfg: CLIPTextConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(CLIPEncoderLayer(cfg) for _ in range(cfg.num_hidden_layers))


class CLIPTextEmbeddings(nn.Module):
    def __init__(self, cfg: CLIPTextConfig) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embedding = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        return self.token_embedding(ids) + self.position_embedding(positions)[None]  # (B, N, D)


class CLIPTextTransformer(nn.Module):
    def __init__(self, cfg: CLIPTextConfig) -> None:
        super().__init__()
        self.embeddings = CLIPTextEmbeddings(cfg)
        self.encoder = CLIPEncoder(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def hidden_states(self, ids: torch.Tensor, upto: int) -> torch.Tensor:
        """Residual stream after `upto` blocks (0 = embeddings), no final LN: (B, N, D)."""
        x = self.embeddings(ids)
        for block in self.encoder.layers[:upto]:
            x = block(x)
        return x


class CLIPTextModel(nn.Module):
    """The HF wrapper level; only exists so that keys read `transformer.text_model.*`."""

    def __init__(self, cfg: CLIPTextConfig) -> None:
        super().__init__()
        self.text_model = CLIPTextTransformer(cfg)


class CLIPTextEmbedder(nn.Module):
    """sgm `FrozenCLIPEmbedder`: prompts (or ids) -> [crossattn part] (+ [pooled])."""

    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = CLIPTextModel(config)

    def outputs(self) -> tuple[str, ...]:
        """Where each tensor returned by `forward` goes, in order."""
        cfg = self.config
        return (cfg.output,) if cfg.pooled_output is None else (cfg.output, cfg.pooled_output)

    def chunk_count(self, texts: Sequence[str]) -> int:
        """77-token windows the longest of `texts` needs (raises on a <lora:...> tag)."""
        return chunk_count(texts, "hf")

    def tokenize(self, texts: Sequence[str]) -> Tokenized:
        return tokenize(texts, "hf", self.config.max_position_embeddings)

    def forward(
        self, text: Sequence[str] | torch.Tensor, generator: torch.Generator | None = None, chunks: int = 1
    ) -> list[torch.Tensor]:
        """`text`: prompts in A1111 syntax (gm.models.prompt), or (B, k * 77) ids. Long prompts are
        encoded in 77-token windows concatenated along the sequence (at least `chunks` of them);
        the pooled vector comes from the first window. `generator` is unused (no noise)."""
        cfg = self.config
        if isinstance(text, torch.Tensor):
            ids, weights = text, None
        else:
            tokens = tokenize_prompts(text, "hf", chunks)
            ids, weights = tokens.ids, (tokens.weights if tokens.weighted else None)
        need_last = cfg.layer != "hidden" or cfg.pooled_output is not None
        main, pooled = encode_chunks(lambda window: self._encode(window, need_last), ids, weights)
        if cfg.layer == "pooled":
            main = pooled[:, None]
        return [main] if cfg.pooled_output is None else [main, pooled]

    def _encode(self, ids: torch.Tensor, need_last: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(N, 77) ids -> (the configured hidden layer, or the final-LN output for "last"/"pooled";
        the pooled vector or None)."""
        cfg = self.config
        tm = self.transformer.text_model
        ids = ids.to(tm.embeddings.token_embedding.weight.device)
        n = cfg.num_hidden_layers
        idx = cfg.layer_idx % (n + 1)  # hidden_states has n + 1 entries; negative counts back
        x = tm.hidden_states(ids, idx)
        hidden = x
        if not need_last:
            return hidden, None
        for block in tm.encoder.layers[idx:]:
            x = block(x)
        last = tm.final_layer_norm(x)
        pooled = last[torch.arange(last.shape[0], device=ids.device), ids.argmax(dim=-1)]  # (N, D)
        return (hidden if cfg.layer == "hidden" else last), pooled
