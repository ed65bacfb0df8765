"""Every numeric option and `--set` value is checked (finite, in range) before anything loads: no
checkpoint exists in these tests, so reaching the loader would be a different error."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from commands.app import app
from gm import presets
from gm.errors import OverrideError, PresetError

P = Path(__file__).resolve().parent / "presets"
SD21, SVD, SV3D_P, SV4D2 = (str(P / f"tiny-{n}.toml") for n in ("sd21", "svd", "sv3d-p", "sv4d2"))


@pytest.fixture()
def image(tmp_path: Path) -> str:
    path = tmp_path / "in.png"
    Image.new("RGB", (64, 64), (200, 100, 50)).save(path)
    return str(path)


CASES = [
    (["txt2img", "a", "-p", SD21, "--set", "guider.scale=nan"], "--set guider.scale: nan is not a finite number"),
    (["txt2img", "a", "-p", SD21, "--set", "sampler.sigma_max=inf"], "--set sampler.sigma_max: inf is not a finite"),
    (["txt2img", "a", "-p", SD21, "--set", "defaults.width=100000"], "--set defaults.width: must be in [1, 8192]"),
    (["txt2img", "a", "-p", SD21, "--cfg", "inf"], "--cfg must be a finite number, got inf"),
    (["txt2img", "a", "-p", SD21, "-W", "100000"], "--width 100000 is above the 8192 px limit"),
    (["txt2img", "a", "-p", SD21, "-H", "0"], "--height 0 is not a positive multiple of 8"),
    (["txt2img", "a", "-p", SD21, "--steps", "0"], "steps must be at least 1, got 0"),
    (["txt2img", "a", "-p", SD21, "--init-image", "{image}", "--strength", "nan"], "--strength must be in (0, 1]"),
    (["txt2img", "a", "-p", SD21, "--init-image", "{image}", "--strength", "1.5"], "--strength must be in (0, 1]"),
    (["img2vid", "{image}", "-p", SVD, "--cond-aug", "nan"], "--cond-aug must be a finite number >= 0, got nan"),
    (["img2vid", "{image}", "-p", SVD, "--motion-bucket-id", "-50"], "--motion-bucket-id must be in [0, 255]"),
    (["img2vid", "{image}", "-p", SVD, "--motion-bucket-id", "256"], "--motion-bucket-id must be in [0, 255]"),
    (["img2vid", "{image}", "-p", SVD, "--fps-id", "-1"], "--fps-id must be in [0, 239], got -1"),
    (["img2vid", "{image}", "-p", SVD, "--fps", "nan"], "--fps must be in (0, 240], got nan"),
    (["img2vid", "{image}", "-p", SVD, "--steps", "0"], "--steps must be at least 1, got 0"),
    (["img2vid", "{image}", "-p", SVD, "--decoding-t", "-1"], "--decoding-t must be 0 (automatic) or more"),
    (["img2vid", "{image}", "-p", SVD, "--set", "defaults.cond_aug=nan"], "--set defaults.cond_aug: nan is not"),
    (["img2vid", "{image}", "-p", SVD, "--set", "perf.decoding_t=-2"], "--set perf.decoding_t: must be at least 0"),
    (["orbit", "{image}", "-p", SV3D_P, "--elevation", "nan"], "elevation nan is outside [-90, 90] degrees"),
    (["orbit", "{image}", "-p", SV3D_P, "--image-frame-ratio", "nan"], "--image-frame-ratio must be in (0, 1]"),
    (["video4d", "x.gif", "-p", SV4D2, "--encoding-t", "-1"], "--encoding-t must be 0 (all frames at once) or more"),
    (["video4d", "x.gif", "-p", SV4D2, "--decoding-t", "-1"], "--decoding-t must be 0 (all frames at once) or more"),
    (["video4d", "x.gif", "-p", SV4D2, "--elevation", "nan"], "elevation nan is outside [-90, 90] degrees"),
    (["video4d", "x.gif", "-p", SV4D2, "--img-size", "100032"], "--img-size 100032 is above the 8192 px limit"),
    (["train", "digits-demo", "--lr", "nan"], "--lr must be a positive finite number, got nan"),
]


@pytest.mark.parametrize(("argv", "message"), CASES, ids=[" ".join(a[:1] + a[3:]) for a, _ in CASES])
def test_bad_number_is_a_usage_error_before_loading(argv: list[str], message: str, image: str,
                                                    tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = [a.replace("{image}", image) for a in argv] + ["-o", str(out)]
    r = CliRunner().invoke(app, argv)
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.output
    assert "checkpoint" not in r.output and not out.exists()


def test_preset_files_get_the_same_checks(tmp_path: Path) -> None:
    """A bad number in a file names the file; the same through --set names --set (exit 2)."""
    text = Path(SVD).read_text().replace("[defaults]", "[defaults]\nmotion_bucket_id = 300", 1)
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    with pytest.raises(PresetError, match=r"bad\.toml\.defaults\.motion_bucket_id: must be in \[0, 255\], got 300"):
        presets.load(str(bad))
    with pytest.raises(OverrideError, match=r"^--set guider\.min_scale: nan is not a finite number \(e\.g\. 1\.0\)$") as err:
        presets.load(SVD, ["guider.min_scale=nan"])
    assert err.value.exit_code == 2


def test_every_shipped_preset_passes_and_inf_is_allowed_only_where_meant() -> None:
    for name in presets.available():
        presets.load(name)
    assert presets.load("sv3d-p", ["sampler.s_tmax=inf"]).sampler.s_tmax == float("inf")
    with pytest.raises(OverrideError, match="s_tmax: nan"):
        presets.load("sv3d-p", ["sampler.s_tmax=nan"])
    with pytest.raises(OverrideError, match="must be > 0"):
        presets.load("sv3d-p", ["sampler.sigma_min=0.0"])


@pytest.mark.parametrize("command", [["txt2img", "a", "-p", SD21], ["img2vid", "{image}", "-p", SVD],
                                     ["video4d", "x.gif", "-p", SV4D2]])
def test_out_that_cannot_be_made_fails_before_loading(command: list[str], image: str, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    argv = [a.replace("{image}", image) for a in command] + ["-o", str(blocker / "sub")]
    r = CliRunner().invoke(app, argv)
    assert r.exit_code == 2 and r.output.strip() == (f"gm: error: cannot create output folder {blocker / 'sub'}: "
                                                     "Not a directory (pick another --out)"), r.output


@pytest.mark.parametrize(("table", "problem"), [
    ([1, 2], "(a list)"),
    ({"w": {"dtype": "F32", "shape": [2]}}, "tensor 'w': data_offsets None is not [begin, end]"),
    ({"w": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}}, "tensor 'w': unknown dtype 'Q4'"),
    ({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, "tensor 'w': shape [-2] is not a list of sizes"),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, "data_offsets [8, 0] is not [begin, end]"),
    ({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, "data_offsets span 8 bytes, its F32 shape [3] needs 12"),
])
def test_checkpoint_header_must_be_a_tensor_table(table: object, problem: str, tmp_path: Path) -> None:
    import json
    import struct

    from gm.checkpoint import read_header
    from gm.errors import CheckpointError, explain

    path = tmp_path / "odd.safetensors"
    header = json.dumps(table).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
    with pytest.raises(CheckpointError) as err:
        read_header(path)
    assert str(err.value).startswith(f"{path}: safetensors header is JSON but not a tensor table ") and problem in str(err.value)
    assert explain(err.value) is err.value


def test_checkpoint_header_offsets_beyond_the_file_are_truncation(tmp_path: Path) -> None:
    import json
    import struct

    from gm.checkpoint import read_header
    from gm.errors import CheckpointError

    path = tmp_path / "short.safetensors"
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
    with pytest.raises(CheckpointError, match=r"truncated \(8 bytes missing of"):
        read_header(path)
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(16))
    assert read_header(path) == {"w": ("F32", (4,))}
