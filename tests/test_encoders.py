"""Tokenizer, CLIP-L / OpenCLIP text and OpenCLIP image towers: golden parity with the reference
(tokenizer, text-clip-l, text-openclip, text-openclip-sd21, image-openclip fixtures) and full-size
meta-device builds whose keys/shapes equal the release manifests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gm.config import from_dict
from gm.models.clip_text import CLIPTextConfig, CLIPTextEmbedder
from gm.models.openclip import (
    OpenCLIPImageConfig,
    OpenCLIPImageEmbedder,
    OpenCLIPTextConfig,
    OpenCLIPTextEmbedder,
    clip_preprocess,
)
from gm.models.tokenizer import END_ID, START_ID, tokenize

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "golden"
MANIFESTS = HERE / "manifests"


def fixture(name: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    folder = GOLDEN / name
    return (
        load_file(folder / "weights.safetensors"),
        load_file(folder / "io.safetensors"),
        json.loads((folder / "config.json").read_text()),
    )


def strip(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def assert_close(actual: torch.Tensor, ref: torch.Tensor, tol: dict) -> None:
    assert actual.shape == ref.shape
    err = (actual - ref).abs()
    bound = tol["atol"] + tol["rtol"] * ref.abs()
    assert bool((err <= bound).all()), f"max err {err.max().item():.3g}"


# ---------------------------------------------------------------- tokenizer


TOKENS = json.loads((GOLDEN / "tokenizer" / "tokens.json").read_text())


@pytest.mark.parametrize("case", TOKENS["prompts"], ids=lambda c: c["text"][:30])
def test_tokenizer_matches_reference(case: dict) -> None:
    hf = tokenize([case["text"]], "hf")
    oc = tokenize([case["text"]], "open_clip")
    assert hf.ids[0].tolist() == case["clip_l_ids"]
    assert oc.ids[0].tolist() == case["openclip_ids"]
    assert hf.dropped[0] == max(0, case["clip_l_num_tokens_untruncated"] - 77)
    assert oc.dropped[0] == max(0, case["openclip_num_tokens_untruncated"] - 77)


def test_tokenizer_truncation_count_and_padding() -> None:
    out = tokenize(["a " * 80, "a cat", ""], "open_clip")
    assert out.dropped == (5, 0, 0)  # 80 words, room for 75
    assert out.ids.shape == (3, 77) and out.ids.dtype == torch.int64
    assert out.ids[0, 0] == START_ID and out.ids[0, 76] == END_ID
    assert out.ids[1, :4].tolist() == [START_ID, 320, 2368, END_ID]
    assert out.ids[1, 4:].eq(0).all()
    hf = tokenize(["a cat"], "hf")
    assert hf.ids[0, 3:].eq(END_ID).all()  # HF CLIP-L pads with <|endoftext|>
    with pytest.raises(TypeError):
        tokenize("a cat", "hf")  # type: ignore[arg-type]


# ---------------------------------------------------------------- CLIP-L text


def clip_config(hf: dict, **extra: object) -> CLIPTextConfig:
    names = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    return from_dict(CLIPTextConfig, {**{n: hf[n] for n in names}, **extra}, "test")


@pytest.mark.parametrize("layer", ["hidden", "last"])
def test_clip_l_text_golden(layer: str) -> None:
    weights, io, cfg = fixture("text-clip-l")
    hf = cfg["hf_clip_text_configs"]["tiny-clip-l-public"]
    emb = CLIPTextEmbedder(clip_config(hf, layer=layer, layer_idx=2, pooled_output="vector"))
    emb.load_state_dict(strip(weights, "conditioner.embedders.0."))
    assert emb.outputs() == ("crossattn", "vector")
    with torch.no_grad():
        main, pooled = emb(io["input_ids"])
    assert_close(main, io[layer], cfg["tolerance"][layer])
    assert_close(pooled, io["pooled"], cfg["tolerance"]["pooled"])


def test_clip_l_text_hidden_only_skips_pooled() -> None:
    weights, io, cfg = fixture("text-clip-l")
    hf = cfg["hf_clip_text_configs"]["tiny-clip-l-public"]
    emb = CLIPTextEmbedder(clip_config(hf, layer_idx=-2))  # -2 = after 2 of 3 blocks, as SDXL's 11 of 12
    emb.load_state_dict(strip(weights, "conditioner.embedders.0."))
    with torch.no_grad():
        (hidden,) = emb(io["input_ids"])
    assert_close(hidden, io["hidden"], cfg["tolerance"]["hidden"])


# ---------------------------------------------------------------- OpenCLIP text


def openclip_text_config(cfg: dict, **extra: object) -> OpenCLIPTextConfig:
    arch = next(iter(cfg["openclip_model_configs"].values()))
    t = arch["text_cfg"]
    fields = dict(vocab_size=t["vocab_size"], width=t["width"], layers=t["layers"], heads=t["heads"])
    return from_dict(OpenCLIPTextConfig, {**fields, "embed_dim": arch["embed_dim"], **extra}, "test")


def test_openclip_bigg_text_golden() -> None:
    weights, io, cfg = fixture("text-openclip")
    emb = OpenCLIPTextEmbedder(openclip_text_config(cfg, legacy=False, pooled_output="vector"))
    emb.load_state_dict(strip(weights, "conditioner.embedders.1."))
    with torch.no_grad():
        penultimate, pooled = emb(io["input_ids"])
    assert_close(penultimate, io["penultimate"], cfg["tolerance"]["penultimate"])
    assert_close(pooled, io["pooled"], cfg["tolerance"]["pooled"])


def test_openclip_sd21_text_golden() -> None:
    weights, io, cfg = fixture("text-openclip-sd21")
    emb = OpenCLIPTextEmbedder(openclip_text_config(cfg))  # legacy + penultimate = SD 2.x defaults
    emb.load_state_dict(strip(weights, "conditioner.embedders.0."))
    with torch.no_grad():
        (crossattn,) = emb(io["input_ids"])
    assert_close(crossattn, io["crossattn"], cfg["tolerance"]["crossattn"])


def test_openclip_text_accepts_prompts() -> None:
    weights, _, cfg = fixture("text-openclip-sd21")
    emb = OpenCLIPTextEmbedder(openclip_text_config(cfg, vocab_size=49408))
    state = strip(weights, "conditioner.embedders.0.")
    state["model.token_embedding.weight"] = torch.randn(49408, state["model.token_embedding.weight"].shape[1])
    emb.load_state_dict(state)
    with torch.no_grad():
        from_text = emb(["a photo of a cat"])[0]
        from_ids = emb(tokenize(["a photo of a cat"], "open_clip").ids)[0]
    assert torch.equal(from_text, from_ids)


# ---------------------------------------------------------------- OpenCLIP image


def test_openclip_image_golden() -> None:
    weights, io, cfg = fixture("image-openclip")
    arch = next(iter(cfg["openclip_model_configs"].values()))
    v, t = arch["vision_cfg"], arch["text_cfg"]
    config = OpenCLIPImageConfig(
        image_size=v["image_size"], patch_size=v["patch_size"], width=v["width"], layers=v["layers"],
        head_width=v["head_width"], embed_dim=arch["embed_dim"], vocab_size=t["vocab_size"], text_width=t["width"],
    )
    emb = OpenCLIPImageEmbedder(config)
    emb.load_state_dict(strip(weights, "conditioner.embedders.0."))
    for name in ("small", "large"):
        x = io[f"{name}_u8"].float() / 127.5 - 1.0
        pre = clip_preprocess(x)[:, :, ::7, ::7]
        assert_close(pre, io[f"{name}_preprocessed_sub7"], cfg["tolerance"][f"{name}_preprocessed_sub7"])
        with torch.no_grad():
            (z,) = emb(x)
        assert_close(z, io[f"{name}_embedding"], cfg["tolerance"][f"{name}_embedding"])


def test_openclip_image_frames_and_copies() -> None:
    config = OpenCLIPImageConfig(width=32, layers=1, head_width=8, embed_dim=6, vocab_size=8, text_width=8,
                                 n_cond_frames=3, n_copies=2)
    torch.manual_seed(0)
    emb = OpenCLIPImageEmbedder(config)
    for p in emb.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x = torch.rand(2 * 3, 3, 48, 64) * 2 - 1
    with torch.no_grad():
        (z,) = emb(x)
        single = emb.open_clip.model.visual(clip_preprocess(x))
    assert z.shape == (4, 3, 6)  # (B * n_copies, n_cond_frames, D)
    torch.testing.assert_close(z[0], single[:3])
    torch.testing.assert_close(z[1], single[:3])
    torch.testing.assert_close(z[2], single[3:])


# ---------------------------------------------------------------- release layouts (meta device)

BIGG = dict(width=1280, layers=32, heads=20, embed_dim=1280, legacy=False, pooled_output="vector")


@pytest.mark.parametrize(
    "manifest, index, build",
    [
        ("sdxl-base", 0, lambda: CLIPTextEmbedder(CLIPTextConfig())),
        ("sdxl-base", 1, lambda: OpenCLIPTextEmbedder(OpenCLIPTextConfig(**BIGG))),
        ("sdxl-refiner", 0, lambda: OpenCLIPTextEmbedder(OpenCLIPTextConfig(**BIGG))),
        ("sd-2.1", 0, lambda: OpenCLIPTextEmbedder(OpenCLIPTextConfig())),
        ("svd", 0, lambda: OpenCLIPImageEmbedder(OpenCLIPImageConfig())),
        ("sv4d", 0, lambda: OpenCLIPImageEmbedder(OpenCLIPImageConfig(n_cond_frames=5))),
    ],
)
def test_release_encoder_matches_manifest(manifest: str, index: int, build) -> None:
    tensors = json.loads((MANIFESTS / f"{manifest}.json").read_text())["tensors"]
    prefix = f"conditioner.embedders.{index}."
    expected = {k[len(prefix) :]: shape for k, shape in tensors.items() if k.startswith(prefix)}
    with torch.device("meta"):
        module = build()
    got = {k: list(v.shape) for k, v in module.state_dict().items()}
    assert got == expected
    assert not list(module.buffers())  # nothing that a meta build + assign-load would leave unset
