"""Bad inputs to `gm txt2img`, `gm refine`, `gm turbo`: one `gm: error:` line, the right exit code, no
traceback and no output file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from commands.app import app
from gm import presets
from tests.tiny import make_checkpoint

PRESETS = Path(__file__).resolve().parent / "presets"
BASE = str(PRESETS / "tiny-sdxl-base.toml")
SD21 = str(PRESETS / "tiny-sd21.toml")
TURBO = str(PRESETS / "tiny-sd21-turbo.toml")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("checkpoints")
    for path in (BASE, SD21, TURBO):
        make_checkpoint(presets.load(path), folder)
    return folder


@pytest.fixture
def gm(checkpoints: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("GM_CHECKPOINTS", str(checkpoints))
    monkeypatch.chdir(tmp_path)  # no ./checkpoints of the developer's

    def invoke(*args: str, stdin: str | None = None):
        return CliRunner().invoke(app, list(args), input=stdin)

    return invoke


def fails(result, code: int, *needles: str) -> str:
    """Assert a one-line error with exit `code` mentioning every needle; return the line."""
    assert result.exit_code == code, (result.exit_code, result.output)
    errors = [line for line in result.stderr.splitlines() if line.startswith("gm: error:")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in errors[0], errors[0]
    assert result.stdout == ""
    return errors[0]


@pytest.fixture
def not_an_image(tmp_path: Path) -> Path:
    path = tmp_path / "notes.png"
    path.write_text("this is not a picture")
    return path


def test_missing_checkpoint_names_the_download_command(gm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GM_CHECKPOINTS")
    fails(gm("txt2img", "a fox", "-o", str(tmp_path / "o")), 1, "sd_xl_base_1.0.safetensors", "gm download sdxl-base-1.0")
    fails(gm("turbo", "a fox", "-o", str(tmp_path / "o")), 1, "gm download sdxl-turbo")
    fails(gm("refine", str(tmp_path), "-o", str(tmp_path / "o")), 1)  # no images in the folder


def test_missing_refiner_checkpoint_fails_before_sampling(gm, tmp_path: Path) -> None:
    out = tmp_path / "o"
    fails(gm("txt2img", "a fox", "-p", BASE, "--refiner", "sdxl-refiner-1.0", "-o", str(out)), 1,
          "gm download sdxl-refiner-1.0")
    assert not out.exists()  # the folder --out made is removed again


def test_refiner_checkpoint_of_another_model_fails_before_the_base_samples(
        gm, checkpoints: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The refiner's file is matched (names and shapes, from its header) before the base runs, not after."""
    from gm.pipelines import image as image_pipeline

    sampled: list[str] = []
    monkeypatch.setattr(image_pipeline, "run_sampler", lambda *a, **k: sampled.append("x"))
    out = tmp_path / "o"
    fails(gm("txt2img", "a fox", "-p", BASE, "--refiner", str(PRESETS / "tiny-sdxl-refiner.toml"),
             "--refiner-checkpoint", str(checkpoints / "tiny-sd21.safetensors"), "-o", str(out)), 1,
          "preset tiny-sdxl-refiner: tiny-sd21.safetensors does not match", "missing")
    assert sampled == [] and not out.exists()


def test_checkpoint_of_another_model_is_a_strict_error(gm, checkpoints: Path, tmp_path: Path) -> None:
    other = str(checkpoints / "tiny-sd21.safetensors")
    fails(gm("txt2img", "a fox", "-p", BASE, "--checkpoint", other, "-o", str(tmp_path)), 1, "does not match",
          "missing")


@pytest.mark.parametrize("args, needle", [
    (("-W", "100"), "multiple of 8"),
    (("-H", "0"), "multiple of 8"),
    (("-W", "72"), "not a multiple of 16, which this model's UNet needs"),
    (("--steps", "0"), "steps must be at least 1"),
    (("--steps", "1001"), "1000 steps at most"),
    (("--sampler", "plms"), "unknown sampler"),
    (("--aspect", "wide"), "not a ratio"),
    (("-n", "0"), "-n must be at least 1"),
    (("--refiner", SD21, "--refiner-strength", "1.5"), "--refiner-strength must be in (0, 1]"),
    (("--refiner", SD21, "--init-image", str(Path(__file__).parent / "media" / "test_image.png")), "needs --no-finish"),
    (("--seed", "-2"), "--seed must be in [0, 2^64) or -1 (random)"),
    (("--seed", "seven"), "--seed 'seven' is not a number"),
    (("--seed", str(2**64 - 1), "-n", "2"), "--seed must be in [0, 2^64)"),
    (("--batch-size", "0"), "--batch-size must be at least 1"),
    (("--cfg", "nan"), "--cfg must be a finite number"),
    # Options that would otherwise be silently ignored.
    (("--strength", "0.5"), "--strength needs --init-image"),
    (("--no-finish",), "--finish/--no-finish needs --refiner"),
    (("--refiner-strength", "0.3", "--refiner-checkpoint", "x.safetensors"),
     "--refiner-strength and --refiner-checkpoint need --refiner"),
    (("--aspect", "1:1", "-W", "64"), "--aspect picks the size itself"),
])
def test_usage_errors_exit_2(gm, tmp_path: Path, args: tuple[str, ...], needle: str) -> None:
    fails(gm("txt2img", "a fox", "-p", SD21, *args, "-o", str(tmp_path / "o")), 2, needle)


@pytest.mark.parametrize("strength", ["0", "1.5", "-0.1"])
def test_strength_outside_0_1(gm, tmp_path: Path, strength: str) -> None:
    image = tmp_path / "in.png"
    ok = gm("txt2img", "a fox", "-p", SD21, "--steps", "1", "-o", str(tmp_path / "a"))
    Path(ok.stdout.strip()).rename(image)
    fails(gm("txt2img", "a fox", "-p", SD21, "--init-image", str(image), "--strength", strength,
             "-o", str(tmp_path / "o")), 2, "--strength must be in (0, 1]")
    fails(gm("refine", str(image), "-p", SD21, "--strength", strength, "-o", str(tmp_path / "o")), 2,
          "--strength must be in (0, 1]")


def test_turbo_steps_limited_to_4(gm, tmp_path: Path) -> None:
    fails(gm("turbo", "a fox", "-p", TURBO, "--steps", "5", "-o", str(tmp_path)), 2, "turbo runs 1 to 4 steps")


def test_unwritable_output_folder(gm, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    fails(gm("txt2img", "a fox", "-p", SD21, "-o", str(blocker / "sub")), 2, "cannot create output folder")


def test_init_image_that_is_not_an_image(gm, tmp_path: Path, not_an_image: Path) -> None:
    fails(gm("txt2img", "a fox", "-p", SD21, "--init-image", str(not_an_image), "-o", str(tmp_path / "o")), 1,
          "not a readable image")
    fails(gm("txt2img", "a fox", "-p", SD21, "--init-image", str(tmp_path / "nope.png"), "-o", str(tmp_path)), 1,
          "no such file")
    fails(gm("refine", "-", "-p", SD21, "-o", str(tmp_path / "o"), stdin=f"{not_an_image}\n"), 1,
          "not a readable image")


def test_video_preset_is_refused(gm, tmp_path: Path) -> None:
    fails(gm("txt2img", "a fox", "-p", str(PRESETS / "tiny-svd.toml"), "-o", str(tmp_path)), 2, "not an image model")


def test_off_grid_size_only_warns(gm, tmp_path: Path) -> None:
    r = gm("txt2img", "a fox", "-p", BASE, "--steps", "1", "-W", "96", "-o", str(tmp_path))
    assert r.exit_code == 0 and "not a multiple of 64" in r.stderr


def test_show_preset_prints_the_effective_preset(gm) -> None:
    r = gm("txt2img", "x", "-p", "sdxl-base-1.0", "--steps", "30", "--sampler", "euler", "--cfg", "5",
           "--show-preset")
    assert r.exit_code == 0
    shown = presets.parse(__import__("tomllib").loads(r.stdout), "shown")
    assert (shown.sampler.steps, shown.sampler.name, shown.guider.scale) == (30, "euler", 5.0)


def test_refiner_schedule_mismatch_fails_before_the_base_samples(gm, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """An EDM base cannot hand over to a DDPM refiner: say so before minutes of base sampling, not after."""
    from gm.pipelines import image as image_pipeline

    sampled: list[str] = []
    monkeypatch.setattr(image_pipeline, "run_sampler", lambda *a, **k: sampled.append("x"))
    out = tmp_path / "o"
    fails(gm("txt2img", "a fox", "-p", BASE, "--steps", "20", "--set", "sampler.discretization=edm",
             "--refiner", SD21, "-o", str(out)), 2, "refiner schedule starts at sigma")
    assert sampled == [] and not out.exists()


def test_failed_run_leaves_no_empty_output_folder(gm, tmp_path: Path) -> None:
    """The folders --out made are removed again when the run fails (rmdir only); existing ones stay."""
    fails(gm("txt2img", "a fox", "-p", BASE, "--out", str(tmp_path / "new" / "deeper"),
             "--checkpoint", str(tmp_path / "missing.safetensors")), 1, "not found")
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()
    fails(gm("txt2img", "a fox", "-p", BASE, "--out", str(tmp_path / "kept" / "run"),
             "--checkpoint", str(tmp_path / "missing.safetensors")), 1, "not found")
    assert (tmp_path / "kept").is_dir() and not (tmp_path / "kept" / "run").exists()
    result = gm("txt2img", "a fox", "-p", BASE, "--out", str(tmp_path / "made"), "--steps", "1", "-W", "64", "-H", "64")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "made").is_dir() and len(list((tmp_path / "made").glob("*.png"))) == 1
