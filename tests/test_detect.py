"""gm.detect: every release preset's architecture recognised from its key manifest, written as a
real safetensors header without tensor data (what gm reads from a 7 GB file before loading)."""

from __future__ import annotations

import json
import struct
from functools import cache
from pathlib import Path

import pytest

from gm import detect, presets
from gm.checkpoint import read_header
from gm.errors import CheckpointError

MANIFESTS = Path(__file__).resolve().parent / "manifests"
# release preset -> its architecture's manifest (Turbo models share the base ones)
RELEASE = {
    "sdxl-base-1.0": "sdxl-base", "sdxl-base-0.9": "sdxl-base", "sdxl-turbo": "sdxl-base",
    "sdxl-refiner-1.0": "sdxl-refiner", "sdxl-refiner-0.9": "sdxl-refiner",
    "sd-2.1": "sd-2.1", "sd-2.1-768": "sd-2.1-768", "sd-turbo": "sd-2.1",
    "svd": "svd", "svd-xt": "svd-xt", "svd-xt-1.1": "svd-xt-1.1",
    "svd-image-decoder": "svd-image-decoder", "svd-xt-image-decoder": "svd-xt-image-decoder",
    "sv3d-u": "sv3d-u", "sv3d-p": "sv3d-p", "sv4d": "sv4d", "sv4d2": "sv4d2", "sv4d2-8views": "sv4d2-8views",
}


@cache
def header_of(manifest: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    tensors = json.loads((MANIFESTS / f"{manifest}.json").read_text())["tensors"]
    return {k: ("F16", tuple(v)) for k, v in tensors.items()}


def write_header_only(path: Path, header: dict[str, tuple[str, tuple[int, ...]]], ldm: bool = False) -> Path:
    """A safetensors file whose header is real and whose data section is a sparse hole."""
    entries, offset = {}, 0
    for key, (_, shape) in header.items():
        n = 2
        for d in shape:
            n *= d
        if ldm and key.startswith("conditioner.embedders.0.model."):
            key = "cond_stage_model.model." + key[len("conditioner.embedders.0.model."):]
        entries[key] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(entries).encode()
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        f.truncate(8 + len(blob) + offset)  # sparse: no data written
    return path


def test_every_release_preset_is_its_manifest_family() -> None:
    assert set(RELEASE) == {n for n in presets.available() if presets.load(n).checkpoint and presets.load(n).checkpoint.repo
                            and presets.load(n).family != "train"}
    for name, manifest in RELEASE.items():
        chosen, note = detect.detect_preset(header_of(manifest))
        group = next(a for a in detect.ARCHS if chosen in a.presets)
        assert name in group.presets, (name, chosen, note)
        # scores: exactly one architecture fits entirely
        assert [a.label for s, a in detect.ranked(detect.shapes(header_of(manifest))) if s == 1] == [group.label]


@pytest.mark.parametrize("name", sorted(RELEASE))
def test_release_file_name_picks_the_exact_preset(tmp_path: Path, name: str) -> None:
    """From a file on disk under its release name: the exact preset, 'by its file name'."""
    spec = presets.load(name).checkpoint
    path = write_header_only(tmp_path / spec.file, header_of(RELEASE[name]), ldm=name.startswith("sd-2"))
    assert read_header(path)  # a valid header, data section present in size
    chosen, note = detect.detect_preset(path)
    assert chosen == name, note
    assert "checkpoint: preset " + name in note


def test_ambiguous_families_say_what_they_assumed() -> None:
    chosen, note = detect.detect_preset(header_of("sd-2.1"))
    assert chosen == "sd-2.1-768"
    assert note.startswith("SD 2.x checkpoint: preset sd-2.1-768 (assumed; same tensors as sd-2.1, sd-turbo;")
    assert "pass -p sd-2.1" in note
    chosen, note = detect.detect_preset(header_of("svd"))
    assert chosen == "svd-xt" and "assumed" in note and "-p svd " in note
    assert detect.detect_preset(header_of("sdxl-base"))[0] == "sdxl-base-1.0"
    assert "-p sdxl-turbo" in detect.detect_preset(header_of("sdxl-base"))[1]
    assert detect.detect_preset(header_of("sv3d-p")) == ("sv3d-p", "SV3D_p checkpoint: preset sv3d-p")


def test_names_of_renamed_files(tmp_path: Path) -> None:
    sd2 = header_of("sd-2.1")
    assert detect.detect_preset(write_header_only(tmp_path / "myModel_512_v3.safetensors", sd2))[0] == "sd-2.1"
    assert detect.detect_preset(write_header_only(tmp_path / "realvis_turbo.safetensors", header_of("sdxl-base")))[0] \
        == "sdxl-turbo"
    assert detect.detect_preset(write_header_only(tmp_path / "v2_768_finetune.safetensors", sd2))[0] == "sd-2.1-768"


def test_not_a_model_and_unknown_architecture() -> None:
    vae_only = {k: v for k, v in header_of("sdxl-base").items() if k.startswith("first_stage_model.")}
    with pytest.raises(CheckpointError, match="holds no diffusion model"):
        detect.detect_preset(vae_only)
    odd = dict(header_of("sdxl-base"))
    odd["model.diffusion_model.label_emb.0.0.weight"] = ("F16", (1280, 999))
    with pytest.raises(CheckpointError, match=r"matches no release architecture \(closest: SDXL base, preset "
                                              r"sdxl-base-1.0, 67% of its probes\)"):
        detect.detect_preset(odd)


def test_suggestion_only_for_another_family() -> None:
    assert detect.suggestion(header_of("sv4d2"), "sdxl-base-1.0") == "it is an SV4D 2.0 checkpoint: use -p sv4d2"
    assert detect.suggestion(header_of("sv4d2"), "sv4d2-8views") == ""  # same tensors: the preset is fine
    assert detect.suggestion(header_of("svd-image-decoder"), "svd") == \
        "it is an SVD (image decoder) checkpoint: use -p svd-xt-image-decoder"
