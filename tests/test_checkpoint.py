"""Strict checkpoint loading on tiny files: meta build + mmap + assign, and every failure mode."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from gm import checkpoint, presets
from gm.errors import CheckpointError


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Module()
        self.model.diffusion_model = nn.Linear(3, 2)
        self.conditioner = nn.Module()
        self.conditioner.embedders = nn.ModuleList([nn.Module()])
        self.conditioner.embedders[0].model = nn.Linear(2, 2, bias=False)
        self.register_buffer("table", torch.empty(0), persistent=False)

    def init_buffers(self, device: torch.device) -> None:
        self.table = torch.arange(4.0, device=device)


def reference_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "model.diffusion_model.weight": torch.randn(2, 3, generator=g),
        "model.diffusion_model.bias": torch.randn(2, generator=g),
        "conditioner.embedders.0.model.weight": torch.randn(2, 2, generator=g),
    }


def save(tmp_path: Path, state: dict[str, torch.Tensor], name: str = "tiny.safetensors") -> Path:
    path = tmp_path / name
    save_file(state, str(path))
    return path


def meta_tiny() -> Tiny:
    with torch.device("meta"):
        return Tiny()


def test_strict_load_assigns_exact_values_in_dtype(tmp_path: Path) -> None:
    state = reference_state()
    path = save(tmp_path, state)
    model = meta_tiny()
    checkpoint.load_into(model, path, dtype_for=lambda k: torch.float64 if "diffusion" in k else None)
    assert model.model.diffusion_model.weight.dtype == torch.float64
    assert torch.equal(model.model.diffusion_model.weight.float(), state["model.diffusion_model.weight"])
    assert torch.equal(model.conditioner.embedders[0].model.weight, state["conditioner.embedders.0.model.weight"])
    assert torch.equal(model.table, torch.arange(4.0))  # non-persistent buffer rebuilt, not left on meta


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda s: s.pop("model.diffusion_model.bias"), r"1 missing: model\.diffusion_model\.bias"),
        (lambda s: s.update(extra=torch.zeros(1)), r"1 unexpected: extra"),
        (lambda s: s.update({"model.diffusion_model.weight": torch.zeros(3, 3)}),
         r"1 wrong shape: model\.diffusion_model\.weight \(file \[3, 3\], model \[2, 3\]\)"),
    ],
)
def test_mismatch_is_one_error_naming_tensors(tmp_path: Path, change, expected: str) -> None:
    state = reference_state()
    change(state)
    path = save(tmp_path, state)
    with pytest.raises(CheckpointError, match=expected) as err:
        checkpoint.load_into(meta_tiny(), path, label="preset tiny")
    assert "preset tiny: tiny.safetensors does not match" in str(err.value)


def test_many_missing_are_counted_and_capped() -> None:
    missing = [f"k{i}" for i in range(12)]
    msg = checkpoint.mismatch_message("x", missing, [], [])
    assert msg == "x does not match: 12 missing: k0, k1, … +10 more"


def test_optional_extras_are_ignored_only_when_declared(tmp_path: Path) -> None:
    state = reference_state() | {"denoiser.sigmas": torch.ones(1000)}
    path = save(tmp_path, state)
    with pytest.raises(CheckpointError, match="unexpected: denoiser.sigmas"):
        checkpoint.load_into(meta_tiny(), path)
    checkpoint.load_into(meta_tiny(), path, optional=["denoiser.sigmas"])


def test_ldm_layout_renames_text_encoder_and_drops_schedule(tmp_path: Path) -> None:
    state = reference_state()
    state["cond_stage_model.model.weight"] = state.pop("conditioner.embedders.0.model.weight")
    state["alphas_cumprod"] = torch.ones(1000)
    path = save(tmp_path, state)
    model = meta_tiny()
    checkpoint.load_into(model, path, layout="ldm")
    assert model.conditioner.embedders[0].model.weight.shape == (2, 2)
    with pytest.raises(CheckpointError, match="unexpected: alphas_cumprod, cond_stage_model"):
        checkpoint.load_into(meta_tiny(), path, layout="sgm")


def test_truncated_and_corrupt_files(tmp_path: Path) -> None:
    path = save(tmp_path, reference_state())
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:-5])
    with pytest.raises(CheckpointError, match=r"truncated \(5 bytes missing"):
        checkpoint.load_into(meta_tiny(), cut)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(struct.pack("<Q", 10) + b"not json!!")
    with pytest.raises(CheckpointError, match="corrupt safetensors header"):
        checkpoint.read_header(junk)
    tiny = tmp_path / "tiny2.safetensors"
    tiny.write_bytes(b"abc")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        checkpoint.read_header(tiny)
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes(struct.pack("<Q", 1 << 40) + json.dumps({}).encode())
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        checkpoint.read_header(huge)


def test_pickle_refused_unless_asked(tmp_path: Path) -> None:
    path = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": reference_state()}, str(path))
    with pytest.raises(CheckpointError, match="pickle checkpoint.*--unsafe-pickle"):
        checkpoint.load_into(meta_tiny(), path)
    model = meta_tiny()
    checkpoint.load_into(model, path, unsafe_pickle=True)
    assert torch.equal(model.model.diffusion_model.bias, reference_state()["model.diffusion_model.bias"])


def test_unsafe_pickle_reads_legacy_files_and_refuses_bad_ones_in_one_line(tmp_path: Path) -> None:
    """--unsafe-pickle: a pre-1.6 (non-zip) .ckpt loads without mmap; a corrupt, truncated or
    object-carrying pickle is a CheckpointError, never a torch traceback."""
    import fractions

    legacy = tmp_path / "legacy.ckpt"
    torch.save({"state_dict": reference_state(), "global_step": 7}, str(legacy), _use_new_zipfile_serialization=False)
    model = meta_tiny()
    checkpoint.load_into(model, legacy, unsafe_pickle=True)
    assert torch.equal(model.conditioner.embedders[0].model.weight, reference_state()["conditioner.embedders.0.model.weight"])
    good = tmp_path / "good.ckpt"
    torch.save(reference_state(), str(good))
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(good.read_bytes()[:200])
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"hello")
    for path in (cut, junk):
        with pytest.raises(CheckpointError, match="cannot read this pickle checkpoint: corrupt, truncated"):
            checkpoint.load_into(meta_tiny(), path, unsafe_pickle=True)
    evil = tmp_path / "evil.ckpt"
    torch.save({**reference_state(), "x": fractions.Fraction(1, 2)}, str(evil))
    with pytest.raises(CheckpointError, match="objects other than tensors"):
        checkpoint.load_into(meta_tiny(), evil, unsafe_pickle=True)
    empty = tmp_path / "empty.ckpt"
    torch.save({"epoch": 3}, str(empty))
    with pytest.raises(CheckpointError, match="no state dict of tensors"):
        checkpoint.load_into(meta_tiny(), empty, unsafe_pickle=True)


def preset_for(tmp_path: Path) -> presets.Preset:
    text = '''name = "tiny"\nfamily = "image"\n[checkpoint]\nfile = "tiny.safetensors"\n[network]\narch = "unet"\n'''
    (tmp_path / "tiny.toml").write_text(text)
    return presets.load(str(tmp_path / "tiny.toml"))


def test_search_order_and_not_found_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = preset_for(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GM_CHECKPOINTS", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(CheckpointError) as err:
        checkpoint.find_checkpoint(p)
    # A preset `gm download` does not offer (no repo, given by path): no download hint, no Hub cache.
    assert "pass --checkpoint FILE" in str(err.value) and "gm download" not in str(err.value)
    assert "Hugging Face" not in str(err.value)
    with pytest.raises(CheckpointError, match=r"the Hugging Face cache\) \(run `gm download sdxl-base-1.0`"):
        checkpoint.find_checkpoint(presets.load("sdxl-base-1.0"))
    assert str(tmp_path / "checkpoints") in str(err.value)
    local = tmp_path / "checkpoints"
    local.mkdir()
    save(local, reference_state())
    assert checkpoint.find_checkpoint(p) == local / "tiny.safetensors"
    env = tmp_path / "env"
    env.mkdir()
    save(env, reference_state())
    monkeypatch.setenv("GM_CHECKPOINTS", str(env))
    assert checkpoint.find_checkpoint(p) == env / "tiny.safetensors"
    explicit = save(tmp_path, reference_state(), "mine.safetensors")
    assert checkpoint.find_checkpoint(p, explicit) == explicit
    with pytest.raises(CheckpointError, match="check the --checkpoint path"):
        checkpoint.find_checkpoint(p, tmp_path / "nope.safetensors")


def test_gm_checkpoints_is_a_list_of_trees(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ComfyUI and A1111 layouts as they are: an os.pathsep list, subfolders, renamed files by stem."""
    p = preset_for(tmp_path)
    monkeypatch.chdir(tmp_path)
    comfy = tmp_path / "ComfyUI" / "models" / "checkpoints"
    a1111 = tmp_path / "webui" / "models" / "Stable-diffusion"
    (comfy / "SDXL" / "finetunes").mkdir(parents=True)
    save(comfy / "SDXL" / "finetunes", reference_state(), "juggernautXL_v9.safetensors")
    (a1111 / "sub").mkdir(parents=True)
    deep = save(a1111 / "sub", reference_state())  # the release name, two levels down
    (comfy / ".hidden").mkdir()
    save(comfy / ".hidden", reference_state())  # staging folders are never searched
    monkeypatch.setenv("GM_CHECKPOINTS", os.pathsep.join([str(comfy), str(tmp_path / "gone"), str(a1111)]))
    assert checkpoint.find_checkpoint(p) == deep
    renamed = comfy / "SDXL" / "finetunes" / "juggernautXL_v9.safetensors"
    assert checkpoint.find_checkpoint(p, "juggernautXL_v9") == renamed  # by stem
    assert checkpoint.find_checkpoint(p, "juggernautXL_v9.safetensors") == renamed  # by name
    with pytest.raises(CheckpointError, match=r"nor a name in .*ComfyUI.*Stable-diffusion"):
        checkpoint.find_checkpoint(p, "nothing_like_it")
    shallow = save(a1111, reference_state())  # shallower copy in the same folder wins
    assert checkpoint.find_checkpoint(p) == shallow


def test_wrong_family_names_the_right_preset_first(tmp_path: Path) -> None:
    """An SD 2.x file given to an SDXL preset: the first words after the file say what it is."""
    from tests.test_detect import header_of

    found = {k: v[1] for k, v in header_of("sd-2.1").items()}
    expected = {k: v[1] for k, v in header_of("sdxl-base").items()}
    missing, unexpected, shapes = checkpoint.compare(expected, found)
    with pytest.raises(CheckpointError) as err:
        raise CheckpointError(checkpoint.mismatch_message("preset sdxl-base-1.0: x.safetensors", missing, unexpected,
                                                          shapes, "it is an SD 2.x checkpoint: use -p sd-2.1-768"))
    msg = str(err.value)
    assert msg.startswith("preset sdxl-base-1.0: x.safetensors does not match: it is an SD 2.x checkpoint: "
                          "use -p sd-2.1-768; ")
    assert len(msg) < 450 and "\n" not in msg


def test_strict_check_suggests_the_preset(tmp_path: Path) -> None:
    """matched_keys (the check every load runs) puts gm.detect's answer into the error."""
    from tests.test_detect import header_of

    class Fake(nn.Module):
        def state_dict(self, *args, **kwargs):  # the SDXL base architecture, on meta
            return {k: torch.empty(v[1], device="meta") for k, v in header_of("sdxl-base").items()}

    with pytest.raises(CheckpointError) as err:
        checkpoint.matched_keys(Fake(), header_of("sv3d-p"), label="preset sdxl-base-1.0: sv3d_p.safetensors")
    first = str(err.value).splitlines()[0]
    assert first.startswith("preset sdxl-base-1.0: sv3d_p.safetensors does not match: it is an SV3D_p checkpoint: "
                            "use -p sv3d-p; ") and len(first) < 700
    assert err.value.hint == "pass the -p it names, or omit -p"
