"""LoRA merging on tiny SDXL / SD 2.1 engines: each key format against a hand-computed
W + scale * alpha / rank * (up @ down), and every refusal (unknown key, wrong family, wrong shape,
pickle, LyCORIS, bad scale) as a one-line error that leaves the weights untouched."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from gm import presets
from gm.errors import CheckpointError, UsageError
from gm.lora import (
    apply_loras,
    extract_prompt_loras,
    find_lora,
    load_lora,
    lora_hash,
    lora_hashes_text,
    parse_lora_arg,
)
from gm.models.build import build_engine

PRESETS = Path(__file__).parent / "presets"
UNET = "model.diffusion_model."


def _engine(name: str):
    torch.manual_seed(0)
    return build_engine(presets.load(str(PRESETS / f"{name}.toml"))).eval().requires_grad_(False)


def _factors(out: int, inp: int, rank: int = 4, kernel: tuple[int, ...] = (), seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    up_kernel = (1,) * len(kernel)
    return torch.randn(rank, inp, *kernel, generator=g), torch.randn(out, rank, *up_kernel, generator=g)


def _kohya(path: Path, module: str, down, up, alpha: float | None = None, **extra) -> Path:
    state = {f"{module}.lora_down.weight": down, f"{module}.lora_up.weight": up, **extra}
    if alpha is not None:
        state[f"{module}.alpha"] = torch.tensor(alpha)
    save_file(state, str(path))
    return path


def _expected(w: torch.Tensor, down, up, scale: float, alpha: float, rank: int) -> torch.Tensor:
    return w + scale * alpha / rank * (up.flatten(1) @ down.flatten(1)).reshape(w.shape)


def _merged(engine, path: Path, scale: float = 1.0, label: str = "tiny") -> dict[str, torch.Tensor]:
    before = {k: v.clone() for k, v in engine.state_dict().items()}
    done = apply_loras(engine, [(load_lora(path), scale)], label)
    assert done[0].modules >= 1
    return before


def _only_changed(engine, before: dict[str, torch.Tensor], keys: set[str]) -> None:
    changed = {k for k, v in engine.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == keys


def test_kohya_unet_ldm_names(tmp_path: Path) -> None:
    engine = _engine("tiny-sdxl-base")
    key = f"{UNET}input_blocks.3.1.transformer_blocks.0.attn1.to_q.weight"
    down, up = _factors(64, 64)
    path = _kohya(tmp_path / "a.safetensors", "lora_unet_input_blocks_3_1_transformer_blocks_0_attn1_to_q", down, up, 2.0)
    before = _merged(engine, path, scale=0.7)
    torch.testing.assert_close(engine.state_dict()[key], _expected(before[key], down, up, 0.7, 2.0, 4))
    _only_changed(engine, before, {key})


def test_kohya_locon_conv_3x3_down_1x1_up(tmp_path: Path) -> None:
    engine = _engine("tiny-sdxl-base")
    key = f"{UNET}input_blocks.1.0.in_layers.2.weight"
    down, up = _factors(32, 32, kernel=(3, 3))
    path = _kohya(tmp_path / "c.safetensors", "lora_unet_input_blocks_1_0_in_layers_2", down, up, 1.0)
    before = _merged(engine, path)
    torch.testing.assert_close(engine.state_dict()[key], _expected(before[key], down, up, 1.0, 1.0, 4))


def test_kohya_diffusers_names_on_sd21_unet_and_text_encoder(tmp_path: Path) -> None:
    engine = _engine("tiny-sd21")
    k_unet = f"{UNET}input_blocks.3.1.transformer_blocks.0.attn2.to_k.weight"  # down_blocks.1 = level 1
    k_te = "conditioner.embedders.0.model.transformer.resblocks.1.attn.in_proj_weight"
    d1, u1 = _factors(64, 32, seed=2)
    d2, u2 = _factors(32, 32, rank=2, seed=3)
    save_file({"lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": d1,
               "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": u1,
               "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.alpha": torch.tensor(8.0),
               "lora_te_text_model_encoder_layers_1_self_attn_k_proj.lora_down.weight": d2,
               "lora_te_text_model_encoder_layers_1_self_attn_k_proj.lora_up.weight": u2,
               "lora_te_text_model_encoder_layers_1_self_attn_k_proj.alpha": torch.tensor(1.0)},
              str(tmp_path / "sd2.safetensors"))
    before = _merged(engine, tmp_path / "sd2.safetensors", scale=0.5)
    state = engine.state_dict()
    torch.testing.assert_close(state[k_unet], _expected(before[k_unet], d1, u1, 0.5, 8.0, 4))
    rows = _expected(before[k_te][32:64], d2, u2, 0.5, 1.0, 2)  # k is the middle third of in_proj
    torch.testing.assert_close(state[k_te][32:64], rows)
    assert torch.equal(state[k_te][:32], before[k_te][:32]) and torch.equal(state[k_te][64:], before[k_te][64:])


def test_peft_and_old_diffusers_formats(tmp_path: Path) -> None:
    engine = _engine("tiny-sdxl-base")
    k_ff = f"{UNET}output_blocks.1.1.transformer_blocks.0.ff.net.2.weight"  # up_blocks.0.attentions.1
    k_out = f"{UNET}middle_block.1.transformer_blocks.0.attn1.to_out.0.weight"
    k_proj = "conditioner.embedders.1.model.text_projection"  # (width 32, embed 16), HF weight = its transpose
    d1, u1 = _factors(64, 256, seed=4)
    d2, u2 = _factors(64, 64, seed=5)
    d3, u3 = _factors(16, 32, seed=6)
    save_file({"unet.up_blocks.0.attentions.1.transformer_blocks.0.ff.net.2.lora_A.weight": d1,
               "unet.up_blocks.0.attentions.1.transformer_blocks.0.ff.net.2.lora_B.weight": u1,
               "unet.mid_block.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.down.weight": d2,
               "unet.mid_block.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.up.weight": u2,
               "text_encoder_2.text_projection.lora_A.weight": d3,
               "text_encoder_2.text_projection.lora_B.weight": u3}, str(tmp_path / "peft.safetensors"))
    assert load_lora(tmp_path / "peft.safetensors").format == "diffusers"
    before = _merged(engine, tmp_path / "peft.safetensors", scale=2.0)
    state = engine.state_dict()
    torch.testing.assert_close(state[k_ff], _expected(before[k_ff], d1, u1, 2.0, 4, 4))  # no alpha: alpha = rank
    torch.testing.assert_close(state[k_out], _expected(before[k_out], d2, u2, 2.0, 4, 4))
    torch.testing.assert_close(state[k_proj], before[k_proj] + 2.0 * (u3 @ d3).T)
    _only_changed(engine, before, {k_ff, k_out, k_proj})


def test_text_encoders_te1_and_te2_fused_slices(tmp_path: Path) -> None:
    engine = _engine("tiny-sdxl-base")
    k1 = "conditioner.embedders.0.transformer.text_model.encoder.layers.0.mlp.fc1.weight"
    k2 = "conditioner.embedders.1.model.transformer.resblocks.1.attn.in_proj_weight"
    d1, u1 = _factors(64, 32, seed=7)
    d2, u2 = _factors(32, 32, seed=8)
    d3, u3 = _factors(32, 32, seed=9)
    save_file({"lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": d1,
               "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": u1,
               "lora_te2_text_model_encoder_layers_1_self_attn_q_proj.lora_down.weight": d2,
               "lora_te2_text_model_encoder_layers_1_self_attn_q_proj.lora_up.weight": u2,
               "lora_te2_text_model_encoder_layers_1_self_attn_v_proj.lora_down.weight": d3,
               "lora_te2_text_model_encoder_layers_1_self_attn_v_proj.lora_up.weight": u3},
              str(tmp_path / "te.safetensors"))
    before = _merged(engine, tmp_path / "te.safetensors")
    state = engine.state_dict()
    torch.testing.assert_close(state[k1], _expected(before[k1], d1, u1, 1.0, 4, 4))
    torch.testing.assert_close(state[k2][:32], _expected(before[k2][:32], d2, u2, 1.0, 4, 4))
    assert torch.equal(state[k2][32:64], before[k2][32:64])  # k untouched
    torch.testing.assert_close(state[k2][64:], _expected(before[k2][64:], d3, u3, 1.0, 4, 4))


def test_two_loras_add_up(tmp_path: Path) -> None:
    engine = _engine("tiny-sdxl-base")
    key = f"{UNET}input_blocks.3.1.transformer_blocks.0.attn1.to_q.weight"
    name = "lora_unet_input_blocks_3_1_transformer_blocks_0_attn1_to_q"
    da, ua = _factors(64, 64, seed=10)
    db, ub = _factors(64, 64, seed=11)
    a, b = _kohya(tmp_path / "a.safetensors", name, da, ua, 4.0), _kohya(tmp_path / "b.safetensors", name, db, ub)
    w = engine.state_dict()[key].clone()
    apply_loras(engine, [(load_lora(a), 0.5), (load_lora(b), -1.0)], "tiny")
    want = _expected(_expected(w, da, ua, 0.5, 4.0, 4), db, ub, -1.0, 4, 4)
    torch.testing.assert_close(engine.state_dict()[key], want)


def _refused(engine, path: Path, *fragments: str) -> None:
    before = {k: v.clone() for k, v in engine.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        apply_loras(engine, [(load_lora(path), 1.0)], "tiny-sdxl-base")
    text = str(err.value)
    assert "\n" not in text
    for fragment in fragments:
        assert fragment in text
    assert all(torch.equal(v, before[k]) for k, v in engine.state_dict().items())  # nothing merged


def test_unknown_key_is_named_and_nothing_merged(tmp_path: Path) -> None:
    down, up = _factors(64, 64)
    path = tmp_path / "u.safetensors"
    save_file({"lora_unet_input_blocks_3_1_transformer_blocks_0_attn1_to_q.lora_down.weight": down,
               "lora_unet_input_blocks_3_1_transformer_blocks_0_attn1_to_q.lora_up.weight": up,
               "lora_unet_input_blocks_3_1_transformer_blocks_0_attn9_to_q.lora_down.weight": down.clone(),
               "lora_unet_input_blocks_3_1_transformer_blocks_0_attn9_to_q.lora_up.weight": up.clone()}, str(path))
    _refused(_engine("tiny-sdxl-base"), path, "lora_unet_input_blocks_3_1_transformer_blocks_0_attn9_to_q",
             "matching no layer of tiny-sdxl-base")


def test_wrong_shape_is_named(tmp_path: Path) -> None:
    down, up = _factors(48, 64)
    path = _kohya(tmp_path / "s.safetensors", "lora_unet_input_blocks_3_1_transformer_blocks_0_attn1_to_q", down, up)
    _refused(_engine("tiny-sdxl-base"), path, "attn1_to_q (LoRA [48, 64], model [64, 64])")


def test_wrong_family_is_named(tmp_path: Path) -> None:
    engine = _engine("tiny-sdxl-base")
    down, up = _factors(320, 768)  # an SD 1.5 LoRA: cross-attention keys of width 768
    sd15 = _kohya(tmp_path / "sd15.safetensors", "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k",
                  down, up)
    _refused(engine, sd15, "LoRA sd15 is for SD 1.x (cross-attention width 768), not for tiny-sdxl-base")
    down, up = _factors(32, 32)
    te_only = _kohya(tmp_path / "te.safetensors", "lora_te_text_model_encoder_layers_0_self_attn_q_proj", down, up)
    _refused(engine, te_only, "is for an SD 1.x/2.x-style model (one text encoder)")
    xl = _kohya(tmp_path / "xl.safetensors", "lora_te2_text_model_encoder_layers_0_self_attn_q_proj", down, up)
    with pytest.raises(CheckpointError, match="is for an SDXL-style model"):
        apply_loras(_engine("tiny-sd21"), [(load_lora(xl), 1.0)], "tiny-sd21")


def test_file_refusals(tmp_path: Path) -> None:
    pickle = tmp_path / "style.pt"
    torch.save({"a": torch.zeros(1)}, pickle)
    with pytest.raises(CheckpointError, match="pickle file; gm reads LoRAs from .safetensors only"):
        load_lora(pickle)
    loha = tmp_path / "loha.safetensors"
    save_file({"lora_unet_x.hada_w1_a": torch.zeros(2, 2), "lora_unet_x.hada_w1_b": torch.zeros(2, 2)}, str(loha))
    with pytest.raises(CheckpointError, match="LoHa adapter, which gm cannot merge"):
        load_lora(loha)
    half = tmp_path / "half.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 4)}, str(half))
    with pytest.raises(CheckpointError, match="not both the down and up factors"):
        load_lora(half)
    with pytest.raises(CheckpointError, match="LoRA file not found"):
        load_lora(tmp_path / "missing.safetensors")


def test_parse_lora_arg_and_prompt_tags() -> None:
    assert parse_lora_arg("style.safetensors") == ("style.safetensors", 1.0)
    assert parse_lora_arg("style.safetensors:0.8") == ("style.safetensors", 0.8)
    assert parse_lora_arg("dir/a:b.safetensors:-1") == ("dir/a:b.safetensors", -1.0)
    assert parse_lora_arg(r"C:\loras\x.safetensors") == (r"C:\loras\x.safetensors", 1.0)
    for bad in ("style.safetensors:strong", "style.safetensors:nan", ":0.5"):
        with pytest.raises(UsageError) as err:
            parse_lora_arg(bad)
        assert err.value.exit_code == 2
    prompt, found = extract_prompt_loras("a fox <lora:pixel_art:0.7>, snow <lora:detail>")
    assert prompt == "a fox , snow" and found == [("pixel_art", 0.7), ("detail", 1.0)]
    with pytest.raises(UsageError, match="not a number"):
        extract_prompt_loras("<lora:x:high>")


def test_find_lora_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "loras").mkdir()
    path = tmp_path / "loras" / "pixel.safetensors"
    path.write_bytes(b"x")
    monkeypatch.setenv("GM_CHECKPOINTS", str(tmp_path))
    assert find_lora("pixel") == path and find_lora("pixel.safetensors") == path
    with pytest.raises(CheckpointError, match="LoRA nope not found .looked in"):
        find_lora("nope")


def test_lora_hash_is_a1111_addnet_hash(tmp_path: Path) -> None:
    down, up = _factors(8, 8)
    a = _kohya(tmp_path / "a.safetensors", "lora_unet_x", down, up)
    data = a.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    assert lora_hash(a) == hashlib.sha256(data[8 + n:]).hexdigest()[:12]
    b = tmp_path / "b.safetensors"  # same tensors, different metadata: same hash
    save_file({"lora_unet_x.lora_down.weight": down, "lora_unet_x.lora_up.weight": up}, str(b),
              metadata={"ss_output_name": "renamed"})
    assert lora_hash(b) == lora_hash(a) and a.read_bytes() != b.read_bytes()
    assert lora_hashes_text([("a", "0123456789ab"), ("b", "ba9876543210")]) == "a: 0123456789ab, b: ba9876543210"


def test_check_on_a_meta_engine_reads_no_weights(tmp_path: Path) -> None:
    from gm.lora import check_loras

    with torch.device("meta"):
        engine = build_engine(presets.load(str(PRESETS / "tiny-sdxl-base.toml")))
    down, up = _factors(64, 64)
    good = _kohya(tmp_path / "g.safetensors", "lora_unet_input_blocks_3_1_transformer_blocks_0_attn1_to_q", down, up)
    assert len(check_loras(engine, [(load_lora(good), 1.0)], "tiny")) == 1
    bad = _kohya(tmp_path / "b.safetensors", "lora_unet_input_blocks_9_1_proj_in", down, up)
    with pytest.raises(CheckpointError, match="lora_unet_input_blocks_9_1_proj_in"):
        check_loras(engine, [(load_lora(bad), 1.0)], "tiny")


def test_half_precision_merge_in_fp32_and_overflow(tmp_path: Path) -> None:
    engine = _engine("tiny-sdxl-base").half()
    key = f"{UNET}input_blocks.3.1.transformer_blocks.0.attn1.to_q.weight"
    down, up = _factors(64, 64)
    path = _kohya(tmp_path / "h.safetensors", "lora_unet_input_blocks_3_1_transformer_blocks_0_attn1_to_q", down, up)
    w = engine.state_dict()[key].clone()
    apply_loras(engine, [(load_lora(path), 0.3)], "tiny")
    want = _expected(w.float(), down, up, 0.3, 4, 4).half()  # summed in fp32, rounded once
    assert torch.equal(engine.state_dict()[key], want)
    with pytest.raises(CheckpointError, match="overflows torch.float16"):
        apply_loras(engine, [(load_lora(path), 1e6)], "tiny")
    nan = _kohya(tmp_path / "n.safetensors", "lora_unet_x", torch.full((2, 4), float("nan")), torch.zeros(4, 2))
    with pytest.raises(CheckpointError, match="non-finite"):
        load_lora(nan)
