"""gm's LoRA merge vs diffusers' `load_lora_adapter` / `load_lora_into_text_encoder` (PEFT) on the same
random tiny SDXL-shaped weights and the same random LoRA files: the UNet in the PEFT format and in
kohya's LDM-named SDXL format (with LoCon convolutions), an SD 2.x-style UNet in kohya's
diffusers-named format, both text encoders in kohya's format (te2
is gm's fused OpenCLIP attention), and a diffusers-layout VAE through `--vae`. Skipped without the
bench extra (diffusers, transformers, peft)."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("diffusers")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from diffusers import StableDiffusionXLPipeline  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from bench import peers  # noqa: E402
from gm import presets  # noqa: E402
from gm.lora import apply_loras, load_lora  # noqa: E402
from gm.models.build import Engine, build_engine  # noqa: E402
from gm.models.unet import UNet, UNetConfig  # noqa: E402
from gm.vae_file import load_vae_override  # noqa: E402

TOL = 1e-4  # relative to the largest output value, fp32
RANK = 4
SCALE = 0.8


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    assert peers.max_abs_diff(a, b) <= TOL * float(a.abs().max())


def _sdxl_unet() -> UNet:
    torch.manual_seed(0)
    return UNet(UNetConfig(in_channels=4, out_channels=4, model_channels=64, num_res_blocks=1,
                           attention_resolutions=(2,), channel_mult=(1, 2), num_head_channels=32,
                           transformer_depth=(1, 2), context_dim=1280, use_linear_in_transformer=True,
                           num_classes="sequential", adm_in_channels=32 + 6 * 256)).eval().requires_grad_(False)


def _random_factors(weight: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors whose product is a sizeable change of `weight` (down may be a 3x3 kernel)."""
    out, inp = weight.shape[:2]
    down = torch.randn(RANK, inp, *weight.shape[2:], generator=g) / (inp * weight[0, 0].numel()) ** 0.5
    up = torch.randn(out, RANK, *(1,) * (weight.dim() - 2), generator=g) * 0.3
    return down, up


def _adapted(name: str) -> bool:
    return "attentions" in name or "resnets.0.conv1" in name


def _unet_inputs():
    g = torch.Generator().manual_seed(1)
    x, ctx = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 7, 1280, generator=g)
    t, pooled = torch.tensor([10.0, 700.0]), torch.randn(2, 32, generator=g)
    time_ids = torch.tensor([[128.0, 128.0, 0.0, 16.0, 128.0, 128.0]] * 2)
    return x, t, ctx, pooled, time_ids


def _merge(unet: UNet, path: Path) -> int:
    engine = Engine(unet, None, None)
    return apply_loras(engine, [(load_lora(path), SCALE)], "tiny SDXL")[0].modules


def test_peft_unet_lora_matches_diffusers(tmp_path: Path) -> None:
    unet = _sdxl_unet()
    peer = peers.diffusers_unet(copy.deepcopy(unet))
    g = torch.Generator().manual_seed(2)
    state = {}
    for name, mod in peer.named_modules():
        if isinstance(mod, (nn.Linear, nn.Conv2d)) and _adapted(name):
            down, up = _random_factors(mod.weight, g)
            state[f"unet.{name}.lora_A.weight"], state[f"unet.{name}.lora_B.weight"] = down, up
    save_file(state, str(tmp_path / "peft.safetensors"))
    x, t, ctx, pooled, time_ids = _unet_inputs()
    with torch.inference_mode():
        plain = unet(x, t, ctx, peers.sdxl_vector(pooled, time_ids))
    assert _merge(unet, tmp_path / "peft.safetensors") == len(state) // 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peer.load_lora_adapter(state, prefix="unet", adapter_name="x")
        peer.set_adapters(["x"], weights=[SCALE])
    with torch.inference_mode():
        ours = unet(x, t, ctx, peers.sdxl_vector(pooled, time_ids))
        theirs = peer(x, t, encoder_hidden_states=ctx,
                      added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
    assert peers.max_abs_diff(ours, plain) > 0.05 * float(plain.abs().max())  # the LoRA matters
    _close(ours, theirs)


def test_kohya_sdxl_unet_lora_matches_diffusers(tmp_path: Path) -> None:
    unet = _sdxl_unet()
    peer = peers.diffusers_unet(copy.deepcopy(unet))
    g = torch.Generator().manual_seed(3)
    state = {}
    for name, mod in unet.named_modules():  # LDM names, as kohya's SDXL trainer writes them
        adapted = ".transformer_blocks." in name or name.endswith((".proj_in", ".proj_out", "in_layers.2"))
        if isinstance(mod, (nn.Linear, nn.Conv2d)) and adapted:
            down, up = _random_factors(mod.weight, g)
            key = "lora_unet_" + name.replace(".", "_")
            state[f"{key}.lora_down.weight"], state[f"{key}.lora_up.weight"] = down, up
            state[f"{key}.alpha"] = torch.tensor(float(RANK) / 2)
    save_file(state, str(tmp_path / "kohya.safetensors"))
    x, t, ctx, pooled, time_ids = _unet_inputs()
    with torch.inference_mode():
        plain = unet(x, t, ctx, peers.sdxl_vector(pooled, time_ids))
    assert _merge(unet, tmp_path / "kohya.safetensors") == len(state) // 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted, alphas = StableDiffusionXLPipeline.lora_state_dict(str(tmp_path / "kohya.safetensors"),
                                                                       unet_config=peer.config)
        converted = {k: v for k, v in converted.items() if k.startswith("unet.")}
        peer.load_lora_adapter(converted, network_alphas=alphas, prefix="unet", adapter_name="x")
        peer.set_adapters(["x"], weights=[SCALE])
    with torch.inference_mode():
        ours = unet(x, t, ctx, peers.sdxl_vector(pooled, time_ids))
        theirs = peer(x, t, encoder_hidden_states=ctx,
                      added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
    assert peers.max_abs_diff(ours, plain) > 0.05 * float(plain.abs().max())
    _close(ours, theirs)


def test_kohya_sd2_unet_lora_in_diffusers_names_matches_diffusers(tmp_path: Path) -> None:
    """kohya's SD 1.x/2.x LoRAs name UNet layers in diffusers' layout (`lora_unet_down_blocks_0_…`)."""
    from diffusers import StableDiffusionPipeline

    torch.manual_seed(10)
    unet = UNet(UNetConfig(in_channels=4, out_channels=4, model_channels=64, num_res_blocks=1,
                           attention_resolutions=(1, 2), channel_mult=(1, 2), num_head_channels=32,
                           context_dim=48, use_linear_in_transformer=True)).eval().requires_grad_(False)
    peer = peers.diffusers_unet(copy.deepcopy(unet))
    g = torch.Generator().manual_seed(11)
    state = {}
    for name, mod in peer.named_modules():
        if isinstance(mod, (nn.Linear, nn.Conv2d)) and _adapted(name):
            down, up = _random_factors(mod.weight, g)
            key = "lora_unet_" + name.replace(".", "_")
            state[f"{key}.lora_down.weight"], state[f"{key}.lora_up.weight"] = down, up
            state[f"{key}.alpha"] = torch.tensor(1.0)
    save_file(state, str(tmp_path / "sd2.safetensors"))
    g = torch.Generator().manual_seed(12)
    x, ctx, t = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 7, 48, generator=g), torch.tensor([1.0, 999.0])
    with torch.inference_mode():
        plain = unet(x, t, ctx)
    assert _merge(unet, tmp_path / "sd2.safetensors") == len(state) // 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted, alphas = StableDiffusionPipeline.lora_state_dict(str(tmp_path / "sd2.safetensors"))
        converted = {k: v for k, v in converted.items() if k.startswith("unet.")}
        peer.load_lora_adapter(converted, network_alphas=alphas, prefix="unet", adapter_name="x")
        peer.set_adapters(["x"], weights=[SCALE])
    with torch.inference_mode():
        ours, theirs = unet(x, t, ctx), peer(x, t, encoder_hidden_states=ctx).sample
    assert peers.max_abs_diff(ours, plain) > 0.05 * float(plain.abs().max())
    _close(ours, theirs)


def _openclip_peer(embedder: nn.Module) -> nn.Module:
    """transformers `CLIPTextModelWithProjection` holding gm's OpenCLIP tower (diffusers' converter)."""
    from diffusers.loaders import single_file_utils as sfu
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    c = embedder.config
    config = CLIPTextConfig(vocab_size=c.vocab_size, hidden_size=c.width, intermediate_size=4 * c.width,
                            num_hidden_layers=c.layers, num_attention_heads=c.heads, max_position_embeddings=77,
                            projection_dim=c.embed_dim, hidden_act="gelu", layer_norm_eps=1e-5)
    prefix = "conditioner.embedders.1."
    state = sfu.convert_open_clip_checkpoint(None, peers.released_state(embedder, prefix), prefix=prefix + "model.")
    peer = CLIPTextModelWithProjection(config)
    if not any(k.startswith("text_model.") for k in peer.state_dict()):
        state = {k.removeprefix("text_model."): v for k, v in state.items()}
    peer.load_state_dict({k: v.clone() for k, v in state.items()}, strict=False)
    return peer.eval().requires_grad_(False)


def test_kohya_text_encoder_loras_match_transformers_with_peft(tmp_path: Path) -> None:
    torch.manual_seed(4)
    engine = build_engine(presets.load(str(Path(__file__).parent / "presets" / "tiny-sdxl-base.toml"))).eval()
    clip, openclip = engine.conditioner.embedders[0], engine.conditioner.embedders[1]
    with torch.no_grad():  # gm builds open_clip's zero-initialised tensors as zeros: make them random
        for param in openclip.parameters():
            if param.dim() >= 2 and not param.any():
                param.normal_(0.0, 0.2)
    peer1 = peers.transformers_clip(copy.deepcopy(clip))
    peer2 = _openclip_peer(openclip)
    g = torch.Generator().manual_seed(5)
    state = {}
    for role, peer in (("te1", peer1), ("te2", peer2)):
        for name, mod in peer.named_modules():
            if isinstance(mod, nn.Linear) and ".layers." in name:
                down, up = _random_factors(mod.weight, g)
                key = f"lora_{role}_" + ("text_model." + name.removeprefix("text_model.")).replace(".", "_")
                state[f"{key}.lora_down.weight"], state[f"{key}.lora_up.weight"] = down, up
                state[f"{key}.alpha"] = torch.tensor(2.0)
    path = tmp_path / "te.safetensors"
    save_file(state, str(path))
    ids = torch.randint(1, 49406, (2, 77), generator=torch.Generator().manual_seed(6))
    ids[:, 0], ids[:, 20] = 49406, 49407
    hf_ids, oc_ids = ids.clone(), ids.clone()
    hf_ids[:, 21:], oc_ids[:, 21:] = 49407, 0  # transformers pads with <end>, open_clip with 0
    with torch.inference_mode():
        plain = clip(hf_ids)[0], openclip(oc_ids)[1]
    apply_loras(engine, [(load_lora(path), 1.0)], "tiny-sdxl-base")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted, alphas = StableDiffusionXLPipeline.lora_state_dict(str(path))
        for peer, prefix in ((peer1, "text_encoder"), (peer2, "text_encoder_2")):
            StableDiffusionXLPipeline.load_lora_into_text_encoder(converted, alphas, peer, prefix=prefix)
    with torch.inference_mode():
        hidden = clip(hf_ids)[0]
        _close(hidden, peer1(input_ids=hf_ids, output_hidden_states=True).hidden_states[1])
        taken, pooled = openclip(oc_ids)
        assert peers.max_abs_diff(hidden, plain[0]) > 0.05 * float(hidden.abs().max())
        assert peers.max_abs_diff(pooled, plain[1]) > 0.05 * float(pooled.abs().max())
        out = peer2(input_ids=oc_ids, output_hidden_states=True)
        _close(taken, out.hidden_states[-2])
        _close(pooled, out.text_embeds)


def test_diffusers_layout_vae_override(tmp_path: Path) -> None:
    torch.manual_seed(7)
    engine = build_engine(presets.load(str(Path(__file__).parent / "presets" / "tiny-sdxl-base.toml"))).eval()
    vae = engine.first_stage_model
    torch.manual_seed(8)
    source = type(vae)(vae.cfg).eval()
    peer = peers.diffusers_vae(source, engine.network.cfg)
    save_file({k: v.contiguous().clone() for k, v in peer.state_dict().items()}, str(tmp_path / "dvae.safetensors"))
    assert load_vae_override(tmp_path / "dvae.safetensors", vae) == "diffusers"
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(9))
    with torch.inference_mode():
        assert torch.equal(vae.decode(z), source.decode(z))


@pytest.mark.parametrize("preset,manifest", [("sdxl-base-1.0", "sdxl-base"), ("sdxl-refiner-1.0", "sdxl-refiner"),
                                             ("sd-2.1", "sd-2.1")])
def test_release_unet_layer_names_agree_with_diffusers_converter(preset: str, manifest: str) -> None:
    """At release sizes (manifest shapes, meta tensors), the diffusers name gm derives for every UNet
    matrix and kernel is the one diffusers' single-file converter gives the same tensor."""
    import json

    from diffusers.loaders import single_file_utils as sfu

    from gm.lora.names import UNET, lookup_table
    from gm.models.build import network_config, vae_config

    path = Path(__file__).parent / "manifests" / f"{manifest}.json"
    shapes = {k: tuple(v) for k, v in json.loads(path.read_text())["tensors"].items()}
    cfg, _ = network_config(presets.load(preset))
    vae_cfg = vae_config(presets.load(preset))[0]
    checkpoint = {k: torch.empty(s, device="meta") for k, s in shapes.items() if k.startswith(UNET)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = sfu.create_unet_diffusers_config_from_ldm(peers.ldm_original_config(cfg, vae_cfg), checkpoint,
                                                           image_size=1024)
        converted = sfu.convert_ldm_unet_checkpoint(checkpoint, config)
    theirs = {id(v): k.removesuffix(".weight") for k, v in converted.items()}
    table, _ = lookup_table(shapes, cfg)
    ours = {k.removeprefix("unet."): t.key for k, t in table.items() if k.startswith("unet.")}
    matrices = [k for k in checkpoint if k.endswith(".weight") and len(shapes[k]) >= 2]
    assert len(ours) == len(matrices)
    assert all(theirs[id(checkpoint[key])] == name for name, key in ours.items())
