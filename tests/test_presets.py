"""Preset loading: TOML -> frozen dataclasses, errors that name file and key, --set overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from gm import presets
from gm.errors import OverrideError, PresetError

TINY = """
name = "tiny"
family = "image"
description = "a tiny test model"

[checkpoint]
file = "tiny.safetensors"
repo = "example/tiny"

[network]
arch = "unet"
in_channels = 4

[sampler]
name = "euler"
steps = 10

[guider]
kind = "vanilla"
scale = 5.0

[[conditioner]]
kind = "scalar"
input = "original_size_as_tuple"
output = "vector"
"""


def write(tmp_path: Path, text: str, name: str = "tiny.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_load_typed_and_frozen(tmp_path: Path) -> None:
    p = presets.load(str(write(tmp_path, TINY)))
    assert p.name == "tiny" and p.family == "image"
    assert p.sampler.steps == 10 and p.sampler.discretization == "legacy_ddpm"
    assert p.guider.scale == 5.0 and isinstance(p.guider.scale, float)
    assert p.checkpoint is not None and p.checkpoint.layout == "sgm"
    assert p.conditioner[0]["kind"] == "scalar"
    with pytest.raises(AttributeError):
        p.sampler.steps = 3  # type: ignore[misc]


def test_unknown_key_names_file_key_and_valid_keys(tmp_path: Path) -> None:
    path = write(tmp_path, TINY.replace("steps = 10", "stepz = 10"))
    with pytest.raises(PresetError) as err:
        presets.load(str(path))
    msg = str(err.value)
    assert str(path) in msg and "unknown key 'stepz'" in msg and "valid keys:" in msg and "steps" in msg
    # The file a preset was read from is recorded by gm, not a key the file may set (or is told about).
    top = write(tmp_path, 'source = "elsewhere"\n' + TINY, "top.toml")
    with pytest.raises(PresetError, match="unknown key 'source'") as err:
        presets.load(str(top))
    assert "vae" in str(err.value) and "source," not in str(err.value)
    assert presets.load(str(write(tmp_path, TINY, "ok.toml"))).source.endswith("ok.toml")


def test_wrong_type_and_missing_field(tmp_path: Path) -> None:
    with pytest.raises(PresetError, match=r"steps: expected an integer, got 'ten'"):
        presets.load(str(write(tmp_path, TINY.replace("steps = 10", 'steps = "ten"'))))
    with pytest.raises(PresetError, match=r"missing key 'family'"):
        presets.load(str(write(tmp_path, TINY.replace('family = "image"', ""))))
    with pytest.raises(PresetError, match=r"'eulerr' is not one of"):
        presets.load(str(write(tmp_path, TINY.replace('name = "euler"', 'name = "eulerr"'))))


def test_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(PresetError, match="not valid TOML"):
        presets.load(str(write(tmp_path, "name = ")))


def test_overrides(tmp_path: Path) -> None:
    path = str(write(tmp_path, TINY))
    p = presets.load(path, ["sampler.steps=30", "guider.scale=7.5", "perf.low_vram=true", "sampler.name=heun"])
    assert (p.sampler.steps, p.guider.scale, p.perf.low_vram, p.sampler.name) == (30, 7.5, True, "heun")
    with pytest.raises(PresetError, match="cannot be overridden"):
        presets.load(path, ["network.model_channels=3"])
    with pytest.raises(PresetError, match="expected table.key=value"):
        presets.load(path, ["steps=3"])
    with pytest.raises(PresetError, match="unknown key 'bogus'"):
        presets.load(path, ["sampler.bogus=1"])
    with pytest.raises(PresetError, match="expected an integer"):
        presets.load(path, ["sampler.steps=many"])
    # A bad --set is the command line's fault: it names --set, not the file, and is a usage error (exit 2).
    with pytest.raises(OverrideError, match=r"^--set sampler.steps: expected an integer, got 'many'$") as err:
        presets.load(path, ["sampler.steps=many"])
    assert err.value.exit_code == 2 and str(err.value).startswith("--set sampler.steps")
    with pytest.raises(OverrideError, match="--set sampler: unknown key 'bogus'") as err:
        presets.load(path, ["sampler.bogus=1"])
    assert "valid keys: " in str(err.value)
    broken = write(tmp_path, TINY.replace("steps = 10", "steps = 'x'"), "broken.toml")
    with pytest.raises(PresetError, match="broken.toml.sampler.steps") as err:  # the file's own mistake
        presets.load(str(broken), ["guider.scale=3"])
    assert err.value.exit_code == 1 and presets.load(str(broken), ["sampler.steps=3"]).sampler.steps == 3


def test_lookup_by_name_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, TINY)
    monkeypatch.setenv("GM_PRESETS", str(tmp_path))
    assert presets.load("tiny").name == "tiny"
    assert "tiny" in presets.available()
    with pytest.raises(PresetError, match="unknown preset 'nope'"):
        presets.load("nope")
    with pytest.raises(PresetError, match="preset file not found"):
        presets.load(str(tmp_path / "missing.toml"))


def test_to_toml_round_trip(tmp_path: Path) -> None:
    p = presets.load(str(write(tmp_path, TINY)), ["sampler.steps=12"])
    again = presets.parse(presets.tomllib.loads(presets.to_toml(p)), "round-trip")
    assert again.to_dict() == p.to_dict()


def test_replace_checks_types(tmp_path: Path) -> None:
    p = presets.load(str(write(tmp_path, TINY)))
    q = presets.replace(p, "sampler", steps=4)
    assert q.sampler.steps == 4 and p.sampler.steps == 10
    with pytest.raises(PresetError):
        presets.replace(p, "sampler", steps="x")


def test_shipped_presets_parse() -> None:
    """Every preset in presets/ parses (architecture tables are checked in test_release_presets)."""
    for name in presets.available():
        p = presets.load(name)
        assert p.name == name, f"{name}.toml says name = {p.name!r}"


def test_defaults_are_typed_per_family() -> None:
    """Each family has its own [defaults] table: a key another family has is an error, in --set too."""
    sdxl = presets.load("sdxl-base-1.0")
    assert type(sdxl.defaults).__name__ == "ImageDefaults" and not hasattr(sdxl.defaults, "views")
    with pytest.raises(OverrideError, match=r"--set defaults: unknown key 'views' \(valid keys: .*zero_uc_text"):
        presets.load("sdxl-base-1.0", ["defaults.views=4"])
    assert presets.load("sv4d2", ["defaults.views=8"]).defaults.views == 8
    assert (presets.load("sv4d").defaults.mode, presets.load("sv4d2").defaults.mode) == ("sv4d", "sv4d2")


def test_names_come_from_the_registries() -> None:
    from gm.diffusion.samplers import SAMPLERS

    with pytest.raises(OverrideError, match=r"'plms' is not one of " + ", ".join(SAMPLERS)):
        presets.load("sd-2.1", ["sampler.name=plms"])
    with pytest.raises(OverrideError, match="'cosine' is not one of"):
        presets.load("sd-2.1", ["guider.kind=cosine"])
