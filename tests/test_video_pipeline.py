"""`gm img2vid` end to end on tiny SVD presets (CPU), the reference's conditioning, and bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from commands.app import app
from gm import presets
from gm.io import watermark
from gm.io.media import probe_video, video_tags
from gm.loader import load_engine
from gm.pipelines.common import Runtime
from gm.pipelines.video import (
    VideoRequest,
    animate,
    build_batch,
    conditioning,
    fit_image,
    image_tensor,
    request_from_preset,
)
from tests.tiny import make_checkpoint

HERE = Path(__file__).parent
IMAGE = HERE / "data" / "test_image_256x144.png"  # the reference's assets/test_image.png, downscaled
CPU = Runtime(device=torch.device("cpu"), dtype=torch.float32, vae_dtype=torch.float32)


def tiny(name: str) -> presets.Preset:
    return presets.load(str(HERE / "presets" / f"{name}.toml"))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ckpt")
    for name in ("tiny-svd", "tiny-svd-image-decoder"):
        make_checkpoint(tiny(name), folder)
    return folder


@pytest.fixture(scope="module")
def engine(checkpoints: Path):
    preset = tiny("tiny-svd")
    return preset, load_engine(preset, checkpoints / "tiny_svd.safetensors")


def gm(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def img2vid(checkpoints: Path, out: Path, *extra: str, preset: str = "tiny-svd", image: Path = IMAGE):
    ckpt = checkpoints / f"{preset.replace('-', '_')}.safetensors"
    return gm("img2vid", str(image), "--preset", str(HERE / "presets" / f"{preset}.toml"), "--checkpoint", str(ckpt),
              "--device", "cpu", "--out", str(out), *extra)


# ---------------------------------------------------------------- conditioning


def test_conditioning_follows_the_reference(engine) -> None:
    preset, eng = engine
    t = 4
    image = image_tensor(fit_image(Image.open(IMAGE), 64, 96)[0])
    eps = torch.randn(image.shape, generator=torch.Generator().manual_seed(5))
    scalars = {"fps_id": torch.tensor(6.0), "motion_bucket_id": torch.tensor(127.0), "cond_aug": torch.tensor(0.02)}
    batch = build_batch(eng, image, image + 0.02 * eps, scalars, t)
    assert list(batch) == ["cond_frames_without_noise", "fps_id", "motion_bucket_id", "cond_frames", "cond_aug"]
    assert batch["fps_id"].tolist() == [6.0] * t  # scalars once per frame, images once
    c, uc = conditioning(eng, CPU, batch, t)
    assert c["crossattn"].shape == (t, 1, 16) and c["concat"].shape == (t, 4, 8, 12) and c["vector"].shape == (t, 48)
    assert torch.equal(c["crossattn"][0], c["crossattn"][-1])  # the same image for every frame
    assert uc["crossattn"].eq(0).all() and uc["concat"].eq(0).all()  # uc zeroes both image branches
    assert torch.equal(uc["vector"], c["vector"])  # ... and keeps fps / motion / cond_aug
    with torch.no_grad():  # concat = posterior mode of the NOISY image, scale 1.0
        mode = eng.embedders.embedders[3].encoder.encode_mode(image + 0.02 * eps)
        clean = eng.embedders.embedders[0](image)[0]
    torch.testing.assert_close(c["concat"][:1], mode)
    torch.testing.assert_close(c["crossattn"][:1], clean)  # CLIP sees the clean image


def test_uncond_reuses_the_image_encoders(engine) -> None:
    """uc is c with the image branches zeroed: the CLIP tower and the VAE encoder run once, and the
    result is what two conditioner calls (the reference's c and uc) give."""
    preset, eng = engine
    t = 2
    image = image_tensor(fit_image(Image.open(IMAGE), 64, 96)[0])
    scalars = {"fps_id": torch.tensor(6.0), "motion_bucket_id": torch.tensor(127.0), "cond_aug": torch.tensor(0.02)}
    batch = build_batch(eng, image, image * 0.9, scalars, t)
    calls: list[str] = []
    hooks = [e.register_forward_hook(lambda m, a, o, name=e.config.input: calls.append(name))
             for e in eng.embedders.embedders]
    try:
        c, uc = conditioning(eng, CPU, batch, t)
    finally:
        for h in hooks:
            h.remove()
    assert sorted(calls) == sorted(batch)  # every embedder exactly once
    with torch.no_grad():
        c2 = eng.embedders(batch)
        uc2 = eng.embedders(batch, force_zero=eng.embedders.uc_zero_inputs)
    for key in c2:
        torch.testing.assert_close(c[key][:1], c2[key][:1].float())
        torch.testing.assert_close(uc[key][:1], uc2[key][:1].float())


def test_same_seed_same_video_and_decoder_chunks(engine) -> None:
    preset, eng = engine
    image = fit_image(Image.open(IMAGE), 64, 96)[0]
    req = VideoRequest(frames=3, steps=1, seed=7, cond_aug=0.02, decoding_t=3)
    a = animate(eng, preset, CPU, image, req)
    b = animate(eng, preset, CPU, image, req)
    other = animate(eng, preset, CPU, image, VideoRequest(frames=3, steps=1, seed=8, cond_aug=0.02, decoding_t=3))
    chunked = animate(eng, preset, CPU, image, VideoRequest(frames=3, steps=1, seed=7, cond_aug=0.02, decoding_t=2))
    assert a.shape == (3, 3, 64, 96) and a.dtype == torch.float32
    assert 0.0 <= a.min() and a.max() <= 1.0
    assert torch.equal(a, b)
    assert (a - other).abs().max() > 1e-3
    # The temporal decoder only mixes frames within one decode call: chunks of 2 differ.
    assert (a - chunked).abs().max() > 1e-6


def test_request_defaults_and_checks() -> None:
    preset = presets.load("svd-xt")
    req = request_from_preset(preset, seed="preset")  # without a seed a fresh one is drawn
    assert (req.frames, req.steps, req.fps_id, req.motion_bucket_id, req.cond_aug, req.seed) == (25, 30, 6, 127, 0.02, 23)
    assert request_from_preset(presets.load("svd")).frames == 14
    assert request_from_preset(presets.load("sv3d-p")).cond_aug == 1e-5


def test_fit_image_covers_and_centre_crops() -> None:
    src = Image.new("RGBA", (200, 100), (0, 0, 0, 0))
    src.paste((255, 0, 0, 255), (50, 0, 150, 100))  # opaque red centre, transparent sides
    out, changed = fit_image(src, 64, 64)
    assert changed and out.size == (64, 64) and out.mode == "RGB"
    arr = np.asarray(out)
    assert tuple(arr[32, 32]) == (255, 0, 0)  # the centre is kept
    r, g, b = (int(v) for v in arr[32, 0])  # 200x100 -> 128x64, crop 32..96: red up to the edge
    assert r > 240 and g < 30 and b < 30
    same, changed = fit_image(Image.new("RGB", (96, 64)), 64, 96)
    assert not changed and same.size == (96, 64)
    white = fit_image(Image.new("RGBA", (96, 64), (0, 0, 0, 0)), 64, 96)[0]
    assert np.asarray(white).min() == 255  # transparency composited on white


# ---------------------------------------------------------------- end to end


def test_img2vid_mp4(checkpoints: Path, tmp_path: Path) -> None:
    code, out, err = img2vid(checkpoints, tmp_path, "--frames", "3", "--steps", "1", "--seed", "11", "--fps-id", "9")
    assert code == 0, err
    (path,) = [Path(line) for line in out.splitlines()]
    assert path == tmp_path / "000000.mp4" and (tmp_path / "000000.jpg").is_file()
    meta = probe_video(path)
    assert meta["fps"] == 10.0  # fps-id + 1
    assert meta["size"] == (96, 64)
    assert abs(meta["duration"] - 0.3) < 0.051  # 3 frames at 10 fps
    record = json.loads(video_tags(path)["comment"])
    assert record["command"] == "img2vid" and record["seed"] == 11 and record["frames"] == 3
    assert record["fps_id"] == 9 and record["preset"]["name"] == "tiny-svd"
    assert record["preset"]["sampler"]["sigma_max"] == 700.0
    assert "resized to cover 96x64" in err
    assert "too small for the invisible watermark" in err
    # never overwritten: a second run takes the next number
    code, out, _ = img2vid(checkpoints, tmp_path, "--frames", "2", "--steps", "1", "--fps", "4", "--json")
    assert code == 0
    line = json.loads(out)
    assert line["path"] == str(tmp_path / "000001.mp4") and line["fps"] == 4.0
    assert probe_video(tmp_path / "000001.mp4")["fps"] == 4.0


def test_img2vid_gif_and_image_decoder(checkpoints: Path, tmp_path: Path) -> None:
    code, out, err = img2vid(checkpoints, tmp_path, "--frames", "3", "--steps", "1", "--format", "gif",
                             preset="tiny-svd-image-decoder")
    assert code == 0, err
    with Image.open(out.strip()) as gif:
        assert gif.n_frames == 3 and gif.size == (96, 64)
        assert abs(gif.info["duration"] - 1000 / 7) <= 10  # fps-id 6 -> 7 fps (gif: 10 ms units)


def test_img2vid_frames_carry_the_watermark(checkpoints: Path, tmp_path: Path) -> None:
    size = ["--set", "defaults.height=256", "--set", "defaults.width=256"]
    code, out, err = img2vid(checkpoints, tmp_path, "--frames", "2", "--steps", "1", "--format", "frames", *size)
    assert code == 0, err
    folder = Path(out.strip())
    pngs = sorted(folder.glob("*.png"))
    assert [p.name for p in pngs] == ["000.png", "001.png"]
    for png in pngs:
        with Image.open(png) as img:
            assert img.size == (256, 256)
            assert json.loads(img.text["gm"])["command"] == "img2vid"
            rgb = np.asarray(img.convert("RGB"))
        assert watermark.detect(rgb).bits >= watermark.VERY_LIKELY_MIN
    assert "watermark" not in err


# ---------------------------------------------------------------- bad inputs


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("gm: error:"), err
    return lines[0]


def test_frames_zero_is_a_usage_error(checkpoints: Path, tmp_path: Path) -> None:
    code, out, err = img2vid(checkpoints, tmp_path, "--frames", "0")
    assert code == 2 and out == ""
    assert "--frames must be at least 1" in one_line_error(err)


def test_video_and_non_image_inputs(checkpoints: Path, tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\x00\x00\x00\x18ftypmp42")
    code, _, err = img2vid(checkpoints, tmp_path / "out", image=clip)
    assert code == 1 and "is a video" in one_line_error(err)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    code, _, err = img2vid(checkpoints, tmp_path / "out", image=text)
    assert code == 1 and "not an image file" in one_line_error(err)
    fake = tmp_path / "fake.png"
    fake.write_text("not a png")
    code, _, err = img2vid(checkpoints, tmp_path / "out", image=fake)
    assert code == 1 and "not a readable image" in one_line_error(err)
    code, _, err = img2vid(checkpoints, tmp_path / "out", image=tmp_path / "missing.png")
    assert code == 1 and "no such file" in one_line_error(err)
    code, _, err = img2vid(checkpoints, tmp_path / "out", image=HERE / "data" / "camel_small.gif")
    assert code == 1 and "is an animated gif (12 frames), not an image" in one_line_error(err)
    still = tmp_path / "still.gif"
    Image.open(IMAGE).convert("RGB").save(still)  # a one-frame gif is an image
    code, _, err = img2vid(checkpoints, tmp_path / "gif", "--frames", "1", "--steps", "1", image=still)
    assert code == 0, err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_wrong_family_and_bad_format(checkpoints: Path, tmp_path: Path) -> None:
    code, _, err = gm("img2vid", str(IMAGE), "--preset", "sv3d-u", "--device", "cpu")
    assert code == 2 and "gm orbit" in one_line_error(err)
    code, _, err = img2vid(checkpoints, tmp_path, "--format", "avi")
    assert code == 2 and "--format" in one_line_error(err)


def test_auto_decoding_chunk_is_the_same_on_cpu_and_a_roomy_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The temporal decoder's result depends on the chunk, so the default may not depend on the device
    unless memory forces it: 8 GiB of activations -> 3 frames at 576x1024, 6 at 576x576."""
    from types import SimpleNamespace

    import torch

    from gm.pipelines import video

    cpu = SimpleNamespace(device=torch.device("cpu"), low_vram=False)
    gpu = SimpleNamespace(device=torch.device("cuda"), low_vram=False)
    assert video.decode_chunk(None, cpu, 0, 25, 576, 1024) == 3
    assert video.decode_chunk(None, cpu, 0, 21, 576, 576) == 6
    assert video.decode_chunk(None, cpu, 0, 3, 64, 96) == 3  # small frames: all at once
    assert video.decode_chunk(None, cpu, 14, 25, 576, 1024) == 14 and video.decode_chunk(None, cpu, 14, 4, 8, 8) == 4
    monkeypatch.setattr(video.dev, "free_memory", lambda device: 80 * 2**30)
    assert video.decode_chunk(None, gpu, 0, 25, 576, 1024) == 3  # roomy: as on the CPU
    monkeypatch.setattr(video.dev, "free_memory", lambda device: 4 * 2**30)
    assert video.decode_chunk(None, gpu, 0, 25, 576, 1024) == 1  # tight: fewer
