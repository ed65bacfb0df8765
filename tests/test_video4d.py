"""`gm video4d`: camera maths against docs/reference.md §2.5/§2.6, window layout, input errors, and end to
end runs of tiny SV4D / SV4D 2.0 presets on small inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from commands.app import app
from gm import presets
from gm.io.media import read_video, video_tags
from gm.pipelines.video4d_camera import (
    diagonal_views,
    roll_orbit,
    sv4d2_camera,
    sv4d2_window_starts,
    sv4d_anchor_frames,
    sv4d_camera,
    sv4d_dense_starts,
)
from tests.tiny import make_checkpoint

HERE = Path(__file__).parent
DATA = HERE / "data"
PRESETS = HERE / "presets"


def test_sv4d_novel_view_azimuths() -> None:
    polars, azimuths = sv4d_camera(10.0)
    expected = [34.29, 85.71, 120.0, 154.29, 205.71, 240.0, 274.29, 325.71]
    assert np.allclose(np.rad2deg(azimuths), expected, atol=0.01)
    assert np.allclose(np.rad2deg(polars), 80.0)


def test_roll_puts_the_input_first() -> None:
    orbit = np.arange(21)
    assert roll_orbit(orbit)[0] == 20 and roll_orbit(orbit)[1] == 0


@pytest.mark.parametrize("views, expected", [
    (4, [60, 120, 180, 240]),
    (8, [30, 75, 120, 165, 210, 255, 300, 330]),
])
def test_sv4d2_default_azimuths(views: int, expected: list[int]) -> None:
    polars, azimuths = sv4d2_camera(views)
    assert np.allclose(np.rad2deg(azimuths), expected)
    assert np.allclose(polars, np.pi / 2)


def test_sv4d2_elevations_are_relative_to_the_input() -> None:
    polars, _ = sv4d2_camera(4, [10.0, 10.0, 20.0, 0.0, 10.0])
    assert np.allclose(np.rad2deg(polars), [90.0, 80.0, 100.0, 90.0])


def test_windows() -> None:
    assert sv4d_anchor_frames(21, 5) == [4, 8, 12, 16, 20]
    assert sv4d_dense_starts(21, 5) == [0, 4, 8, 12, 16]
    assert sv4d2_window_starts(21, 12, 4) == [0, 9]
    assert sv4d2_window_starts(21, 5, 8) == [0, 4, 8, 12, 16]
    assert diagonal_views(21, 9)[:6] == [0, 0, 1, 1, 2, 2] and diagonal_views(21, 9)[-3:] == [0, 0, 1]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ckpt")
    for name in ("tiny-sv4d", "tiny-sv4d2", "tiny-sv4d2-8views", "tiny-sv3d-u"):
        make_checkpoint(presets.load(str(PRESETS / f"{name}.toml")), folder)
    return folder


def gm(args: list[str], checkpoints: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("GM_CHECKPOINTS", str(checkpoints))
    return CliRunner().invoke(app, ["video4d", *args, "-q"])


@pytest.mark.slow
def test_sv4d2_end_to_end_frame_folder(tmp_path: Path, checkpoints: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, frame in enumerate(read_video(DATA / "camel_small.gif")):
        frame.save(frames / f"{i:03d}.png")
    out = tmp_path / "out"
    args = [str(frames), "--preset", str(PRESETS / "tiny-sv4d2.toml"), "--frames", "12", "--img-size", "64",
            "--steps", "1", "--seed", "7", "--out", str(out)]
    result = gm(args, checkpoints, monkeypatch)
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir())
    assert names == ["000000_grid.mp4", "000000_process_input.mp4"] + [f"000000_v00{v}.mp4" for v in range(1, 5)]
    assert len(read_video(out / "000000_v001.mp4")) == 12
    assert read_video(out / "000000_grid.mp4")[0].size == (192, 128)  # 3 x 2 tiles of 64
    record = json.loads(video_tags(out / "000000_v003.mp4")["comment"])
    assert record["request"]["seed"] == 7 and record["preset"] == "tiny-sv4d2"
    again = gm(args, checkpoints, monkeypatch)  # never overwritten: the next number
    assert again.exit_code == 0 and (out / "000001_v004.mp4").is_file()


@pytest.mark.slow
def test_sv4d_end_to_end_mp4(tmp_path: Path, checkpoints: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    result = gm([str(DATA / "test_video1_small.mp4"), "--preset", str(PRESETS / "tiny-sv4d.toml"),
                 "--sv3d-preset", str(PRESETS / "tiny-sv3d-u.toml"), "--img-size", "64", "--steps", "1",
                 "--out", str(out)], checkpoints, monkeypatch)
    assert result.exit_code == 0, result.output
    tags = ["process_input", "t000", *[f"v{v:03d}" for v in range(1, 9)], "diag", "grid"]
    assert sorted(p.name for p in out.iterdir()) == sorted(f"000000_{t}.mp4" for t in tags)
    assert len(read_video(out / "000000_t000.mp4")) == 9
    assert len(read_video(out / "000000_v008.mp4")) == 21
    assert len(read_video(out / "000000_diag.mp4")) == 21


def five_frame_gif(folder: Path) -> Path:
    frames = read_video(DATA / "camel_small.gif")[:5]
    frames[0].save(folder / "five.gif", save_all=True, append_images=frames[1:])
    return folder / "five.gif"


SV4D2 = ["--preset", str(PRESETS / "tiny-sv4d2.toml")]


@pytest.mark.parametrize("make_input, extra, message, code", [
    (five_frame_gif, [], "five.gif: 5 frames, the model needs 21 (pass --pad", 1),
    (five_frame_gif, SV4D2, "5 frames, the model needs 21", 1),
    (lambda d: DATA / "camel_small.gif", [], "12 frames, the model needs 21", 1),
    (lambda d: (d / "notes.txt").write_text("x") and d / "notes.txt", [], "not a video", 1),
    (lambda d: (d / "empty").mkdir() or d / "empty", [], "no frames", 1),
    (lambda d: d / "nothing-*.png", [], "matches no", 1),
    (lambda d: DATA / "camel_small.gif", ["--azimuths", "0,10,20"], "--azimuths needs 21 values", 2),
    (lambda d: DATA / "camel_small.gif", [*SV4D2, "--azimuths", "0,10"], "--azimuths needs 5 values", 2),
    (lambda d: DATA / "camel_small.gif", [*SV4D2, "--azimuths", "0,10,20,400,5"], "azimuth 400 is outside", 2),
    (lambda d: DATA / "camel_small.gif", ["--img-size", "100"], "multiple of 64", 2),
    (lambda d: DATA / "camel_small.gif", [*SV4D2, "--frames", "0"], "--frames must be at least", 2),
    (lambda d: DATA / "camel_small.gif", ["--sv3d-preset", str(PRESETS / "tiny-svd.toml")], "not an SV3D one", 2),
    # Checkpoints are looked up before anything is read or written.
    (lambda d: DATA / "test_video1_small.mp4", ["--checkpoint", "/no/sv4d.safetensors"], "checkpoint not found", 1),
    (lambda d: DATA / "test_video1_small.mp4", ["--sv3d-checkpoint", "/no/sv3d.safetensors"],
     "check the --sv3d-checkpoint path", 1),
])
def test_bad_inputs(tmp_path: Path, checkpoints: Path, monkeypatch: pytest.MonkeyPatch,
                    make_input, extra: list[str], message: str, code: int) -> None:
    source = make_input(tmp_path)
    out = tmp_path / "out"
    result = gm([str(source), "--preset", str(PRESETS / "tiny-sv4d.toml"), "--sv3d-preset",
                 str(PRESETS / "tiny-sv3d-u.toml"), "--out", str(out), *extra], checkpoints, monkeypatch)
    assert result.exit_code == code, result.output
    (line,) = result.output.strip().splitlines()  # one line, no traceback
    assert line.startswith("gm: error: ") and message in line
    assert not out.exists() or not any(out.iterdir())  # nothing written


def test_pad_ping_pongs_a_short_input(tmp_path: Path) -> None:
    from gm.pipelines.video4d_input import read_frames

    frames = read_frames(str(DATA / "camel_small.gif"), 21, pad=True)
    assert len(frames) == 21
    assert np.array_equal(np.asarray(frames[12]), np.asarray(frames[11]))  # 0..11, then 11..0


def test_preprocess_non_square_centres_the_object() -> None:
    from gm.pipelines.video4d_input import preprocess

    image = Image.new("RGB", (120, 60), "white")
    image.paste((255, 0, 0), (50, 20, 70, 40))  # a centred red square
    out = np.asarray(preprocess([image], 64, 0.5)[0])
    red = np.argwhere((out[..., 0] > 200) & (out[..., 1] < 80))
    assert abs(red.mean(axis=0) - 31.5).max() < 2  # centred in the square output


def test_sv4d2_windows_cover_every_frame() -> None:
    # 22 frames: the 8-view script's range stops at 16 (frames 16-20); one more window ends on 21.
    assert sv4d2_window_starts(22, 5, 8) == [0, 4, 8, 12, 16, 17]
    assert sv4d2_window_starts(25, 12, 4) == [0, 12, 13]
    for frames in range(5, 40):
        covered = {s + i for s in sv4d2_window_starts(frames, 5, 8) for i in range(5)}
        assert covered == set(range(frames)), frames


# ---------------------------------------------------------------- sampling procedure (docs/reference.md §2.5-2.6)


def _sampler(checkpoints: Path, name: str, steps: int = 2):
    import torch

    from gm.models.build import load_engine
    from gm.pipelines.common import Runtime
    from gm.pipelines.video4d import Sampler4D, Video4DRequest, check_request, is_sv4d

    preset = presets.load(str(PRESETS / f"{name}.toml"))
    engine = load_engine(preset, checkpoints / preset.checkpoint.file)
    runtime = Runtime(device=torch.device("cpu"), dtype=torch.float32, vae_dtype=torch.float32)
    request = Video4DRequest(source="", frames=21, steps=steps, seed=0, size=64, frame_ratio=0.9,
                             elevations=10.0 if is_sv4d(preset) else 0.0, azimuths=None, encoding_t=8, decoding_t=4)
    polars, azimuths = check_request(preset, request)
    return Sampler4D(engine, preset, runtime, request, polars, azimuths, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", ["tiny-sv4d", "tiny-sv4d2"])
def test_conditioning_c_and_uc(checkpoints: Path, name: str) -> None:
    import torch

    s = _sampler(checkpoints, name)
    t, v = s.t, s.v
    gen = torch.Generator().manual_seed(1)
    motion, views = torch.rand(t, 3, 64, 64, generator=gen) * 2 - 1, torch.rand(v, 3, 64, 64, generator=gen) * 2 - 1
    c, uc = s.conditioning(motion, views)
    sigma_width = 32  # tiny presets: sigma 32 | polar 48 | azimuth 48
    assert c["vector"].shape == (t * v, 128) and c["concat"].shape == (t * v, 4, 8, 8)
    assert c["crossattn"].shape == (1, t, 16)  # one CLIP token per motion frame
    assert c["cond_view"].shape == (v, 4, 8, 8) and c["cond_motion"].shape == (t, 4, 8, 8)
    for key in ("concat", "cond_view", "cond_motion"):
        assert c[key].abs().sum() > 0 and uc[key].eq(0).all(), key  # uc zeroes every image input
    assert uc["crossattn"].eq(0).all()  # (the tiny CLIP's projection is all zeros, so c's is too)
    assert uc["vector"][:, :sigma_width].eq(0).all()  # ... the sigma embedding of cond_frames too
    assert torch.equal(uc["vector"][:, sigma_width:], c["vector"][:, sigma_width:])  # the camera stays
    # cond_frames: frame t repeated for its V views (t-major); the sigma embedding is that of 1e-5.
    assert torch.allclose(c["concat"][0], c["concat"][v - 1], atol=1e-3)
    torch.testing.assert_close(c["vector"][0, :sigma_width],
                               torch.cat([torch.ones(16), torch.zeros(16)]), atol=1e-4, rtol=0)
    assert c["image_only_indicator"].eq(1).all() and c["num_video_frames"] == t * v
    first_c, first_uc = s.conditioning(motion, views, cond_mv=False)  # SV4D 2.0's first window
    assert first_c["cond_view"].eq(0).all() and first_uc["cond_view"].eq(0).all()
    assert first_c["image_only_indicator"].eq(0).all() and first_c["concat"].abs().sum() > 0


def test_euler_step_scales_only_the_first_step() -> None:
    import torch

    from gm.diffusion.guiders import IdentityGuider
    from gm.pipelines.video4d import Sampler4D

    s = Sampler4D.__new__(Sampler4D)  # only what step() uses
    s.sigmas_dev = torch.tensor([700.0, 10.0, 0.5, 0.0])
    s.guider = IdentityGuider()
    s.denoiser = lambda x, sigma, cond: torch.full_like(x, 0.25)  # D(x, sigma) = 0.25
    x = torch.ones(2, 1, 1, 1)
    x0 = s.step(x, 0, {}, {})
    scaled = (1 + 700.0**2) ** 0.5
    torch.testing.assert_close(x0, scaled + (10.0 - 700.0) * (scaled - 0.25) / 700.0 * x, rtol=1e-5, atol=0)
    x1 = s.step(x, 1, {}, {})  # later steps: no sqrt(1 + sigma^2) scaling
    torch.testing.assert_close(x1, 1 + (0.5 - 10.0) * (1 - 0.25) / 10.0 * x)


class _FakeSV4D:
    """Records what run_sv4d asks of a Sampler4D: conditioning sets, the latents per step."""

    def __init__(self, t: int, v: int, steps: int, device: str) -> None:
        import torch

        from gm.pipelines.common import Runtime

        self.t, self.v = t, v
        self.request = type("R", (), {"steps": steps})()
        self.runtime = Runtime(device=torch.device(device), dtype=torch.float32, vae_dtype=torch.float32)
        self.engine = type("E", (), {"network": None})()
        self.conds: list[tuple[list[float], list[float]]] = []
        self.steps: list[tuple[int, int, list[float]]] = []

    def latent_shape(self):
        return 1, 1, 1

    def noise(self, shape):
        import torch

        frames, views = shape[:2]  # latent (t, v) = 100 t + v (v = 1.. for the novel views): where every latent came from
        marks = 100.0 * torch.arange(frames)[:, None] + torch.arange(views)[None]
        return marks.view(frames, views, 1, 1, 1).expand(shape).clone()

    def conditioning(self, motion, views, cond_mv=True):
        self.conds.append(([float(m.mean()) for m in motion], [float(x.mean()) for x in views]))
        return len(self.conds) - 1, None

    def sample(self, c, uc, label):
        import torch

        return torch.full((self.t * self.v, 1, 1, 1), -1.0)  # anchor latents

    def step(self, x, k, c, uc):
        assert x.device == self.runtime.device  # the window stays on the device between steps
        if x.device.type != "meta":
            self.steps.append((k, c, x.view(self.t, self.v)[:, 0].tolist()))
        return x

    def decode(self, z, label="decode"):
        import torch

        if z.device.type == "meta":
            return torch.zeros(z.shape[0], 3, 2, 2)
        return z.float().cpu().mean((1, 2, 3))[:, None, None, None].expand(-1, 3, 2, 2).clone()


def test_dense_windows_alternate_per_step_and_overwrite_boundaries() -> None:
    import torch

    from gm.pipelines.video4d import run_sv4d

    frames, t, v, steps = 7, 3, 2, 3  # anchors 2, 4, 6; windows 0-2, 2-4, 4-6
    img = torch.zeros(frames, 1 + v, 3, 2, 2)
    img[:, 0] = torch.arange(frames, dtype=torch.float32).view(frames, 1, 1, 1)  # input frame t = t
    img[0, 1:] = 0.5  # the SV3D views
    fake = _FakeSV4D(t, v, steps, "cpu")
    overall = type("O", (), {"advance": lambda self: None})()
    run_sv4d(fake, img, overall)
    anchor, *windows = fake.conds
    assert anchor == ([2.0, 4.0, 6.0], [0.5, 0.5])  # anchor pass: frames 2, 4, 6, views of t = 0
    # Per window: forward (ascending, views at t0) then backward (descending, views at t0 + 2).
    assert windows[0] == ([0.0, 1.0, 2.0], [0.5, 0.5]) and windows[1] == ([2.0, 1.0, 0.0], [-1.0, -1.0])
    # Window 2-4 conditions forward on frame 2 as RE-generated by window 0-2 (latent marks 201, 202).
    assert windows[2] == ([2.0, 3.0, 4.0], [201.0, 202.0]) and windows[3][1] == [-1.0, -1.0]
    # Even steps backward (descending frames), odd steps forward, one Euler step each.
    assert [(k, c) for k, c, _ in fake.steps[:3]] == [(0, 2), (1, 1), (2, 2)]
    assert fake.steps[0][2] == [201.0, 101.0, 1.0] and fake.steps[1][2] == [1.0, 101.0, 201.0]
    # Decoding overwrites every frame of each window, the boundary frames and t = 0 included.
    assert img[:, 1:, 0, 0, 0].tolist() == [[100.0 * i + 1, 100.0 * i + 2] for i in range(frames)]
    # The window's latents never leave the device inside the step loop (no per-step host copy).
    run_sv4d(_FakeSV4D(t, v, steps, "meta"), torch.zeros(frames, 1 + v, 3, 2, 2), overall)


def test_remove_bg_segments_frames_at_full_size() -> None:
    from gm.pipelines.video4d_input import preprocess

    seen: list[tuple[int, int]] = []

    def segment(image: Image.Image) -> Image.Image:
        seen.append(image.size)
        out = image.convert("RGBA")
        out.putalpha(Image.new("L", image.size, 255))
        return out

    frame = Image.new("RGB", (1000, 800), "white")
    preprocess([frame, frame.convert("RGBA")], 64, 0.9, remove_bg=True, segment=segment)
    assert seen == [(1000, 800)]  # no 768 thumbnail (SV3D's step), RGBA frames keep their alpha


@pytest.mark.parametrize("identical, dropped", [(True, 2), (False, 0)])
def test_vae_encoder_copies_run_once_when_identical(tmp_path: Path, identical: bool, dropped: int) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    from gm.models.build import load_engine
    from gm.pipelines.video4d import share_identical_encoders

    preset = presets.load(str(PRESETS / "tiny-sv4d2.toml"))
    path = make_checkpoint(preset, tmp_path)
    if identical:  # the release files: cond_view's and cond_motion's copies equal cond_frames's
        state = load_file(str(path))
        first = "conditioner.embedders.1.encoder."
        for i in (4, 5):
            state.update({k.replace(first, f"conditioner.embedders.{i}.encoder."): v.clone()
                          for k, v in state.items() if k.startswith(first)})
        save_file(state, str(path))
    engine = load_engine(preset, path)  # strict: every copy is loaded as the file has it
    emb = engine.embedders
    frames = torch.rand(48, 3, 64, 64, generator=torch.Generator().manual_seed(3)) * 2 - 1  # 12 t x 4 views

    def encode() -> list[torch.Tensor]:
        with torch.inference_mode():
            return [emb.embedders[i](frames[:emb.embedders[i].config.n_cond_frames], torch.Generator().manual_seed(0))[0]
                    for i in (1, 4, 5)]

    before, params = encode(), sum(p.numel() for p in engine.parameters())
    decoder = sum(p.numel() for n, p in emb.embedders[1].encoder.named_parameters() if "decoder" in n or "post_quant" in n)
    encoder = sum(p.numel() for p in emb.embedders[1].encoder.parameters()) - decoder
    assert share_identical_encoders(engine) == dropped
    assert (emb.embedders[4].encoder is emb.embedders[1].encoder) == identical
    assert not any(hasattr(emb.embedders[i].encoder, "decoder") for i in (1, 4, 5))  # never run: freed
    assert sum(p.numel() for p in engine.parameters()) == params - 3 * decoder - dropped * encoder
    for a, b in zip(before, encode()):
        assert torch.equal(a, b)  # the same latents from the one remaining copy
