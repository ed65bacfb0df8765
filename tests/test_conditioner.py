"""Conditioner: golden parity with sgm's GeneralConditioner (conditioner-sdxl, conditioner-sdxl-refiner),
scalar / VAE-encoder embedders, uc zeroing, seeded ucg dropout, preset validation and the release
conditioner layouts (meta device) against the manifests."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gm.errors import PresetError, UsageError
from gm.models.conditioner import EMBEDDERS, build_conditioner, validate_conditioner
from gm.models.vae import Autoencoder, VAEConfig
from gm.nn.embeddings import timestep_embedding

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


def assert_close(actual: torch.Tensor, ref: torch.Tensor, tol: dict) -> None:
    assert actual.shape == ref.shape
    err = (actual - ref).abs()
    assert bool((err <= tol["atol"] + tol["rtol"] * ref.abs()).all()), f"max err {err.max().item():.3g}"


def tiny_openclip_table(cfg: dict, arch: str, **extra: object) -> dict:
    a = cfg["openclip_model_configs"][arch]
    t = a["text_cfg"]
    return dict(kind="openclip_text", vocab_size=t["vocab_size"], width=t["width"], layers=t["layers"],
                heads=t["heads"], embed_dim=a["embed_dim"], legacy=False, pooled_output="vector", **extra)


def test_sdxl_conditioner_golden() -> None:
    weights, io, cfg = fixture("conditioner-sdxl")
    h = cfg["hf_clip_text_configs"]["tiny-sdxl-clip-public"]
    tables = [
        dict(kind="clip_l_text", input="txt_clip", vocab_size=h["vocab_size"], hidden_size=h["hidden_size"],
             intermediate_size=h["intermediate_size"], num_hidden_layers=h["num_hidden_layers"],
             num_attention_heads=h["num_attention_heads"], layer="hidden", layer_idx=1, zero_in_uc=True),
        tiny_openclip_table(cfg, "tiny-sdxl-openclip-public", input="txt_openclip", zero_in_uc=True),
        dict(kind="scalar", input="original_size_as_tuple", outdim=8),
        dict(kind="scalar", input="crop_coords_top_left", outdim=8),
        dict(kind="scalar", input="target_size_as_tuple", outdim=8),
    ]
    cond = build_conditioner(tables, "test")
    cond.load_state_dict({k.removeprefix("conditioner."): v for k, v in weights.items()})
    sizes = {k: io[k] for k in ("original_size_as_tuple", "crop_coords_top_left", "target_size_as_tuple")}
    batch = dict(sizes, txt_clip=io["txt_clip_ids"], txt_openclip=io["txt_openclip_ids"])
    batch_uc = dict(sizes, txt_clip=io["uc_txt_clip_ids"], txt_openclip=io["uc_txt_openclip_ids"])
    assert cond.uc_zero_inputs == {"txt_clip", "txt_openclip"}
    with torch.no_grad():
        results = {
            "": cond.get_conditioning(batch),
            "uc_": cond.get_conditioning(batch_uc, force_zero=cond.uc_zero_inputs),
            "uc_nozero_": cond.get_conditioning(batch_uc),
        }
    for prefix, out in results.items():
        assert set(out) == {"crossattn", "vector"}
        for key in ("crossattn", "vector"):
            assert_close(out[key], io[prefix + key], cfg["tolerance"][prefix + key])


def test_refiner_conditioner_golden() -> None:
    weights, io, cfg = fixture("conditioner-sdxl-refiner")
    tables = [
        tiny_openclip_table(cfg, "tiny-sdxl-openclip-public"),
        dict(kind="scalar", input="original_size_as_tuple", outdim=8),
        dict(kind="scalar", input="crop_coords_top_left", outdim=8),
        dict(kind="scalar", input="aesthetic_score", outdim=8),
    ]
    cond = build_conditioner(tables, "test")
    cond.load_state_dict({k.removeprefix("conditioner."): v for k, v in weights.items()})
    sizes = {k: io[k] for k in ("original_size_as_tuple", "crop_coords_top_left")}
    batch = dict(sizes, txt=io["txt_openclip_ids"], aesthetic_score=io["aesthetic_score"])
    batch_uc = dict(sizes, txt=io["uc_txt_openclip_ids"], aesthetic_score=io["uc_aesthetic_score"])
    assert cond.uc_zero_inputs == frozenset()  # the refiner encodes the negative prompt
    with torch.no_grad():
        results = {
            "": cond(batch),
            "uc_": cond(batch_uc, force_zero={"txt"}),
            "uc_nozero_": cond(batch_uc),
        }
    for prefix, out in results.items():
        for key in ("crossattn", "vector"):
            assert_close(out[key], io[prefix + key], cfg["tolerance"][prefix + key])


def test_scalar_embedder_is_cos_first_per_column() -> None:
    cond = build_conditioner([dict(kind="scalar", input="size", outdim=4)], "test")
    out = cond({"size": torch.tensor([[1024.0, 768.0]])})["vector"]
    f = [1.0, math.exp(-math.log(10000) / 2)]
    expected = [math.cos(1024 * f[0]), math.cos(1024 * f[1]), math.sin(1024 * f[0]), math.sin(1024 * f[1]),
                math.cos(768 * f[0]), math.cos(768 * f[1]), math.sin(768 * f[0]), math.sin(768 * f[1])]
    torch.testing.assert_close(out, torch.tensor([expected]), atol=1e-4, rtol=0)
    one_d = cond({"size": torch.tensor([6.0, 127.0])})["vector"]  # (B,) inputs are one column
    assert one_d.shape == (2, 4)


def test_outputs_concatenate_in_order_with_explicit_destinations() -> None:
    tables = [
        dict(kind="scalar", input="a", outdim=4),
        dict(kind="class", input="cls", embed_dim=3, n_classes=5, add_sequence_dim=True, output="crossattn"),
        dict(kind="scalar", input="b", outdim=2),
    ]
    cond = build_conditioner(tables, "test")
    batch = {"a": torch.tensor([1.0, 2.0]), "cls": torch.tensor([0, 4]), "b": torch.tensor([[3.0, 4.0], [5.0, 6.0]])}
    out = cond(batch, force_zero={"b"})
    assert out["vector"].shape == (2, 4 + 2 * 2)
    assert out["vector"][:, 4:].eq(0).all() and out["vector"][:, :4].abs().sum() > 0
    torch.testing.assert_close(out["crossattn"], cond.embedders[1].embedding.weight[[0, 4]][:, None])
    with pytest.raises(KeyError, match="cls"):
        cond({"a": batch["a"], "b": batch["b"]})


def test_ucg_dropout_is_seeded_and_per_sample() -> None:
    cond = build_conditioner([dict(kind="scalar", input="x", outdim=8, ucg_rate=0.5)], "test")
    x = torch.arange(1.0, 65.0)
    clean = cond({"x": x})["vector"]
    a = cond({"x": x}, ucg_generator=torch.Generator().manual_seed(7))["vector"]
    b = cond({"x": x}, ucg_generator=torch.Generator().manual_seed(7))["vector"]
    assert torch.equal(a, b)
    dropped = a.eq(0).all(dim=1)
    assert torch.equal(a[~dropped], clean[~dropped])
    assert 10 < int(dropped.sum()) < 54


def test_legacy_ucg_value_replaces_the_prompt() -> None:
    torch.manual_seed(0)
    tiny = dict(kind="openclip_text", width=16, layers=2, heads=2, embed_dim=8, legacy=False,
                pooled_output="vector", ucg_rate=0.5, legacy_ucg_value="")
    cond = build_conditioner([tiny], "test")
    for p in cond.parameters():
        torch.nn.init.normal_(p, std=0.2)
    prompts = [f"a photo of {i} cats" for i in range(16)]
    with torch.no_grad():
        out = cond({"txt": prompts}, ucg_generator=torch.Generator().manual_seed(3))
        clean = cond({"txt": prompts})
        empty = cond({"txt": [""]})
    same_as_empty = torch.isclose(out["crossattn"], empty["crossattn"]).flatten(1).all(1)
    same_as_clean = torch.isclose(out["crossattn"], clean["crossattn"]).flatten(1).all(1)
    assert bool((same_as_empty ^ same_as_clean).all())
    assert 0 < int(same_as_empty.sum()) < 16
    assert prompts[0] == "a photo of 0 cats"  # the caller's batch is not modified


def test_long_prompts_are_chunked_not_dropped() -> None:
    with torch.device("meta"):
        cond = build_conditioner([dict(kind="clip_l_text"), dict(kind="openclip_text")], "test")
    assert cond.dropped_tokens(["a cat", "dog " * 100]) == 0
    assert cond.prompt_chunks(["a cat"]) == 1
    assert cond.prompt_chunks(["a cat", "dog " * 100]) == 2  # 100 tokens: 75 + 25
    assert cond.prompt_chunks(["dog " * 150]) == 2 and cond.prompt_chunks(["dog " * 151]) == 3
    with pytest.raises(UsageError, match="--lora"):
        cond.dropped_tokens(["a cat <lora:film:0.8>"])


# ---------------------------------------------------------------- VAE-encoder embedder

TINY_VAE = dict(ch=32, ch_mult=[1, 2], num_res_blocks=1, z_channels=4, embed_dim=4)


def tiny_vae_table(**extra: object) -> dict:
    return dict(kind="vae_encoder", encoder_config=TINY_VAE, **extra)


def randomised(cond: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    for p in cond.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return cond


def test_vae_encoder_embedder_is_chunked_posterior_mode() -> None:
    frames = torch.rand(3, 3, 16, 16) * 2 - 1
    whole = randomised(build_conditioner([tiny_vae_table(n_copies=2)], "test"))
    chunked = build_conditioner([tiny_vae_table(n_copies=2, en_and_decode_n_samples_a_time=2)], "test")
    chunked.load_state_dict(whole.state_dict())
    with torch.no_grad():
        a = whole({"cond_frames": frames}, force_zero=())["concat"]
        b = chunked({"cond_frames": frames})["concat"]
        mode = whole.embedders[0].encoder.encode_mode(frames)
        uc = whole({"cond_frames": frames}, force_zero=whole.uc_zero_inputs)["concat"]
    assert a.shape == (6, 4, 8, 8)  # each sample repeated n_copies times
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a[0::2], mode)
    torch.testing.assert_close(a[1::2], mode)
    assert uc.eq(0).all()


def test_vae_encoder_sv4d_noise_and_sigma_embedding() -> None:
    table = tiny_vae_table(n_cond_frames=4, noise_sigma=1e-5, sigma_cond_outdim=8)
    cond = randomised(build_conditioner([table], "test"))
    frames = torch.rand(8, 3, 16, 16) * 2 - 1  # 2 samples x 4 frames
    with torch.no_grad():
        a = cond({"cond_frames": frames}, generator=torch.Generator().manual_seed(1))
        b = cond({"cond_frames": frames}, generator=torch.Generator().manual_seed(1))
        noise = torch.randn(frames.shape, generator=torch.Generator().manual_seed(1))
        expected = cond.embedders[0].encoder.encode_mode(frames + 1e-5 * noise)
    assert torch.equal(a["concat"], b["concat"])
    assert a["concat"].shape == (8, 4, 8, 8)  # one row per frame when n_cond_frames > 1
    torch.testing.assert_close(a["concat"], expected)
    sigma_emb = timestep_embedding(torch.tensor([1e-5]), 8)
    torch.testing.assert_close(a["vector"], sigma_emb.expand(8, 8))


# ---------------------------------------------------------------- presets: validation and release layouts


def test_bad_tables_are_preset_errors() -> None:
    with pytest.raises(PresetError, match="unknown or missing kind"):
        validate_conditioner([dict(kind="t5", input="txt")], "p.toml [[conditioner]]")
    with pytest.raises(PresetError, match="unknown key 'outdimm'"):
        validate_conditioner([dict(kind="scalar", input="x", outdimm=4)], "p.toml")
    with pytest.raises(PresetError, match="not one of"):
        validate_conditioner([dict(kind="scalar", input="x", outdim=4, output="vec")], "p.toml")
    with pytest.raises(PresetError, match="legacy"):
        build_conditioner([dict(kind="openclip_text", pooled_output="vector")], "p.toml")
    assert set(EMBEDDERS) == {"clip_l_text", "openclip_text", "openclip_image", "scalar", "vae_encoder", "class"}


BIGG = dict(kind="openclip_text", width=1280, layers=32, heads=20, embed_dim=1280, legacy=False,
            pooled_output="vector")


def scalar(key: str, outdim: int = 256) -> dict:
    return dict(kind="scalar", input=key, outdim=outdim)


RELEASE_TABLES = {
    "sdxl-base": [dict(kind="clip_l_text", zero_in_uc=True), dict(BIGG, zero_in_uc=True),
                  scalar("original_size_as_tuple"), scalar("crop_coords_top_left"), scalar("target_size_as_tuple")],
    "sdxl-refiner": [BIGG, scalar("original_size_as_tuple"), scalar("crop_coords_top_left"),
                     scalar("aesthetic_score")],
    "sd-2.1": [dict(kind="openclip_text")],
    "svd": [dict(kind="openclip_image"), scalar("fps_id"), scalar("motion_bucket_id"),
            dict(kind="vae_encoder"), scalar("cond_aug")],
    "sv3d-p": [dict(kind="openclip_image"), dict(kind="vae_encoder"), scalar("cond_aug"),
               scalar("polars_rad", 512), scalar("azimuths_rad", 512)],
    "sv4d": [dict(kind="openclip_image", n_cond_frames=5),
             dict(kind="vae_encoder", n_cond_frames=40, noise_sigma=1e-5, sigma_cond_outdim=256),
             scalar("polar_rad", 512), scalar("azimuth_rad", 512),
             dict(kind="vae_encoder", input="cond_view", output="cond_view", n_cond_frames=8, noise_sigma=1e-5),
             dict(kind="vae_encoder", input="cond_motion", output="cond_motion", n_cond_frames=5,
                  noise_sigma=1e-5)],
}


@pytest.mark.parametrize("manifest", sorted(RELEASE_TABLES))
def test_release_conditioner_matches_manifest(manifest: str) -> None:
    tensors = json.loads((MANIFESTS / f"{manifest}.json").read_text())["tensors"]
    expected = {k.removeprefix("conditioner."): s for k, s in tensors.items() if k.startswith("conditioner.")}
    with torch.device("meta"):
        cond = build_conditioner(RELEASE_TABLES[manifest], manifest)
    got = {k: list(v.shape) for k, v in cond.state_dict().items()}
    assert got == expected


def test_vae_config_default_is_release_encoder() -> None:
    with torch.device("meta"):
        ref = Autoencoder(VAEConfig())
        cond = build_conditioner([dict(kind="vae_encoder")], "test")
    assert {k: v.shape for k, v in ref.state_dict().items()} == {
        k.removeprefix("embedders.0.encoder."): v.shape for k, v in cond.state_dict().items()
    }
