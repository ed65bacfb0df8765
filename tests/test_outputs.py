"""gm.outputs: one metadata schema for every command, and no file for a non-finite result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from commands.app import app
from gm import presets
from gm.errors import GmError
from gm.io.media import read_png_text
from gm.outputs import check_finite, run_record
from tests.tiny import make_checkpoint

SD21 = str(Path(__file__).resolve().parent / "presets" / "tiny-sd21.toml")


def test_check_finite_names_the_phase() -> None:
    x = torch.ones(2, 3)
    assert check_finite(x, "decode") is x
    x[1, 2] = float("nan")
    with pytest.raises(GmError, match="the decode produced NaN or infinite values, so nothing was written") as err:
        check_finite(x, "decode")
    assert "guider.scale" in err.value.hint and err.value.exit_code == 1


def test_record_schema_is_shared_and_strict_json() -> None:
    svd = presets.load(str(Path(SD21).parent / "tiny-svd.toml"))
    record = run_record("img2vid", svd, 5, input="a.png")
    assert list(record)[:4] == ["command", "seed", "gm_version", "preset"] and record["input"] == "a.png"
    assert record["preset"]["name"] == "tiny-svd"
    json.loads(json.dumps(record, allow_nan=False))  # inf (s_tmax) is written as a string


def test_nan_weights_are_an_error_and_write_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.set_num_threads(1)
    path = make_checkpoint(presets.load(SD21), tmp_path / "ckpt")
    state = load_file(str(path))
    key = next(k for k in state if k.startswith("model.diffusion_model.out."))
    state[key] = torch.full_like(state[key], float("nan"))
    save_file(state, str(path))
    monkeypatch.setenv("GM_CHECKPOINTS", str(tmp_path / "ckpt"))
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["txt2img", "a cat", "-p", SD21, "--steps", "1", "-o", str(out)])
    assert r.exit_code == 1 and "sampling (sample) produced NaN" in r.output and "Traceback" not in r.output
    assert not out.exists()  # the folder it made is removed again, nothing written


def test_png_record_uses_the_schema(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.set_num_threads(1)
    make_checkpoint(presets.load(SD21), tmp_path / "ckpt")
    monkeypatch.setenv("GM_CHECKPOINTS", str(tmp_path / "ckpt"))
    r = CliRunner().invoke(app, ["txt2img", "a cat", "-p", SD21, "--steps", "1", "--seed", "9", "-q",
                                 "-o", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    text = read_png_text(Path(r.stdout.strip()))
    record = json.loads(text["gm"])
    assert (record["command"], record["seed"], record["preset"]["name"]) == ("txt2img", 9, "tiny-sd21")
    assert text["parameters"].startswith("a cat\nSteps: 1, Sampler: Euler") and record["parameters"] == text["parameters"]
