"""`gm <command> --jobs FILE` end to end on tiny presets: a job file gives the files of the equivalent
single commands (pixel-identical), loads the model once, checks every line before loading, resumes
after kill -9, and splits over two torchrun ranks (gloo, CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from commands.app import app
from gm import loader, presets
from gm.batch import manifest
from gm.io.media import read_video, video_tags
from tests.tiny import make_checkpoint

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PRESETS = HERE / "presets"
SD21 = str(PRESETS / "tiny-sd21.toml")
IMAGE = str(HERE / "data" / "test_image_256x144.png")
GIF = str(HERE / "data" / "camel_small.gif")
AZIMUTHS = [*range(17, 357, 17), 0]  # 21 views, the input last
NAMES = ("tiny-sd21", "tiny-sdxl-base", "tiny-sdxl-refiner", "tiny-sdxl-turbo", "tiny-svd", "tiny-sv3d-p", "tiny-sv4d2")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ckpt")
    for name in NAMES:
        make_checkpoint(presets.load(str(PRESETS / f"{name}.toml")), folder)
    return folder


@pytest.fixture
def loads(checkpoints: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """GM_CHECKPOINTS set, and the name of every preset loaded from a checkpoint file."""
    monkeypatch.setenv("GM_CHECKPOINTS", str(checkpoints))
    seen: list[str] = []
    real = loader._load
    monkeypatch.setattr(loader, "_load", lambda p, *a: seen.append(p.name) or real(p, *a))
    return seen


def gm(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [*args, "-q"])
    return result.exit_code, result.stdout, result.stderr


def write_jobs(path: Path, lines: list[dict | str]) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def same_files(batch: Path, single: Path, video: bool = False) -> None:
    """The same file names, with the same pixels (videos: decoded frames and the recorded parameters)."""
    names = sorted(p.name for p in single.iterdir())
    assert sorted(p.name for p in batch.iterdir()) == names
    for name in names:
        a, b = batch / name, single / name
        if video and name.endswith(".mp4"):
            x, y = (np.stack([np.asarray(f, dtype=np.int16) for f in read_video(p)]) for p in (a, b))
            assert x.shape == y.shape and np.array_equal(x, y), (name, np.abs(x - y).max(), (x != y).mean())
            assert json.loads(video_tags(a)["comment"]) == json.loads(video_tags(b)["comment"])
        else:
            assert a.read_bytes() == b.read_bytes(), name


IMAGE_LINES: list[dict | str] = [
    {"prompt": "a red fox", "seed": 3},
    "a blue bird",  # a plain line is a prompt: the command line's seed and steps
    {"prompt": "a red fox", "seed": 11, "steps": 3, "sampler": "euler_a", "cfg": 3.5, "n": 2, "id": "fox"},
    {"prompt": "a cat", "negative": "blurry", "width": 128, "height": 64, "seed": 5},
]


def test_txt2img_jobs_match_single_commands_with_one_load(tmp_path: Path, loads: list[str]) -> None:
    jobs = write_jobs(tmp_path / "jobs.jsonl", IMAGE_LINES)
    code, out, err = gm("txt2img", "--jobs", str(jobs), "--preset", SD21, "--device", "cpu", "--steps", "2",
                        "-o", str(tmp_path / "out"))
    assert code == 0, err
    assert loads == ["tiny-sd21"]
    records = manifest.read_records(tmp_path / "out" / manifest.MANIFEST)
    from commands._jobs import merge

    derived = merge({"seed": None}, {"prompt": "a blue bird"}, {})["seed"]  # no seed: one derived from the line
    assert derived == merge({"seed": None}, {"prompt": "a blue bird"}, {})["seed"] != 42
    assert [(r["job"], r["line"], r["seeds"]) for r in records] == [
        ("job-000000", 1, [3]), ("job-000001", 2, [derived]), ("fox", 3, [11, 12]), ("job-000003", 4, [5])]
    assert out.split() == [str(tmp_path / "out" / f) for r in records for f in r["files"]]
    singles = [["a red fox", "--seed", "3", "--steps", "2"], ["a blue bird", "--seed", str(derived), "--steps", "2"],
               ["a red fox", "--seed", "11", "--steps", "3", "--sampler", "euler_a", "--cfg", "3.5", "-n", "2"],
               ["a cat", "--negative", "blurry", "-W", "128", "-H", "64", "--seed", "5", "--steps", "2"]]
    for record, args in zip(records, singles, strict=True):
        single = tmp_path / "single" / record["job"]
        code, _, err = gm("txt2img", *args, "--preset", SD21, "--device", "cpu", "-o", str(single))
        assert code == 0, err
        same_files(tmp_path / "out" / record["job"], single)

    again = gm("txt2img", "--jobs", str(jobs), "--preset", SD21, "--device", "cpu", "--steps", "2",
               "-o", str(tmp_path / "out"))
    assert again[0] == 0 and again[1] == "" and loads == ["tiny-sd21"] * 5  # 1 + the singles; all done: no load


def test_turbo_and_refine_jobs(tmp_path: Path, loads: list[str]) -> None:
    turbo = str(PRESETS / "tiny-sdxl-turbo.toml")
    jobs = write_jobs(tmp_path / "t.txt", ["a fox", {"prompt": "a bird", "seed": 9, "steps": 2}])
    assert gm("turbo", "--jobs", str(jobs), "--preset", turbo, "--device", "cpu", "-o", str(tmp_path / "t"))[0] == 0
    assert gm("turbo", "a bird", "--seed", "9", "--steps", "2", "--preset", turbo, "--device", "cpu",
              "-o", str(tmp_path / "t1"))[0] == 0
    same_files(tmp_path / "t" / "job-000001", tmp_path / "t1")
    first = str(tmp_path / "t" / "job-000000" / "000000.png")
    jobs = write_jobs(tmp_path / "r.jsonl", [{"input": first, "strength": 0.5, "prompt": "a fox", "seed": 2}])
    code, _, err = gm("refine", "--jobs", str(jobs), "--preset", SD21, "--device", "cpu", "-o", str(tmp_path / "r"))
    assert code == 0, err
    code, _, err = gm("refine", first, "--strength", "0.5", "--prompt", "a fox", "--seed", "2", "--preset", SD21,
                      "--device", "cpu", "-o", str(tmp_path / "r1"))
    assert code == 0, err
    same_files(tmp_path / "r" / "job-000000", tmp_path / "r1")
    assert loads == ["tiny-sdxl-turbo"] * 2 + ["tiny-sd21"] * 2


def test_refiner_loads_once_for_lines_with_other_steps_and_cfg(tmp_path: Path, loads: list[str]) -> None:
    base = ["--preset", str(PRESETS / "tiny-sdxl-base.toml"), "--refiner", str(PRESETS / "tiny-sdxl-refiner.toml"),
            "--device", "cpu", "--steps", "4"]
    jobs = write_jobs(tmp_path / "jobs.jsonl", [{"prompt": "a fox", "seed": 1},
                                                {"prompt": "a fox", "seed": 2, "steps": 6, "cfg": 4.0}])
    code, _, err = gm("txt2img", "--jobs", str(jobs), *base, "-o", str(tmp_path / "out"))
    assert code == 0, err
    assert loads == ["tiny-sdxl-base", "tiny-sdxl-refiner"]
    for k, args in enumerate([["--seed", "1"], ["--seed", "2", "--steps", "6", "--cfg", "4"]]):
        assert gm("txt2img", "a fox", *base, *args, "-o", str(tmp_path / f"single{k}"))[0] == 0
        same_files(tmp_path / "out" / f"job-{k:06d}", tmp_path / f"single{k}")


def test_bad_lines_are_reported_before_anything_loads(tmp_path: Path, loads: list[str]) -> None:
    jobs = write_jobs(tmp_path / "bad.jsonl", [
        {"prompt": "fine"}, {"prompt": "x", "widht": 64}, {"prompt": "x", "width": 100},
        {"prompt": "x", "preset": "sdxl-base-1.0"}, {"prompt": "x", "aspect": "1:1", "width": 64},
        {"prompt": "x", "strength": 0.5}, "{not json", {"seed": 1}])
    code, out, err = gm("txt2img", "--jobs", str(jobs), "--preset", SD21, "--device", "cpu",
                        "-o", str(tmp_path / "out"))
    assert code == 2 and out == "" and loads == []
    assert not (tmp_path / "out").exists()
    assert "7 bad lines, nothing was run" in err
    for number, text in [(2, "did you mean 'width'"), (3, "100"), (4, "unknown option 'preset'"), (5, "--aspect"),
                         (6, "--init-image"), (7, "not valid JSON"), (8, "no 'prompt'")]:
        assert f"bad.jsonl:{number}:" in err and text in err.split(f"bad.jsonl:{number}:")[1].split("\n")[0]
    assert gm("txt2img", "--preset", SD21)[0] == 2  # neither a prompt nor --jobs
    code, _, err = gm("txt2img", "a fox", "--jobs", str(jobs), "--preset", SD21)
    assert code == 2 and "not both" in err
    assert gm("orbit", "--jobs", str(write_jobs(tmp_path / "o.jsonl", [{"seed": 1}])),
              "--preset", str(PRESETS / "tiny-sv3d-p.toml"))[0] == 2
    assert loads == []


@pytest.mark.slow
def test_img2vid_orbit_video4d_jobs_match_single_runs(tmp_path: Path, loads: list[str]) -> None:
    cases = [
        ("img2vid", "tiny-svd", ["--frames", "2", "--steps", "1"],
         [({"input": IMAGE, "seed": 3}, [IMAGE, "--seed", "3"]),
          ({"input": [IMAGE], "seed": 4, "frames": 3, "motion_bucket_id": 30},
           [IMAGE, "--seed", "4", "--frames", "3", "--motion-bucket-id", "30"])]),
        ("orbit", "tiny-sv3d-p", ["--steps", "1", "--no-remove-bg"],
         [({"input": IMAGE, "elevation": 20, "seed": 6}, [IMAGE, "--elevation", "20", "--seed", "6"]),
          ({"input": IMAGE, "seed": 5, "azimuths": AZIMUTHS},
           [IMAGE, "--seed", "5", "--azimuths", ",".join(map(str, AZIMUTHS))])]),
        ("video4d", "tiny-sv4d2", ["--frames", "12", "--img-size", "64", "--steps", "1"],
         [({"input": GIF, "seed": 3}, [GIF, "--seed", "3"]),
          ({"input": GIF, "seed": 4, "elevation": 5}, [GIF, "--seed", "4", "--elevation", "5"])]),
    ]
    for command, name, common, pairs in cases:
        preset = ["--preset", str(PRESETS / f"{name}.toml"), "--device", "cpu", *common]
        jobs = write_jobs(tmp_path / f"{command}.jsonl", [line for line, _ in pairs])
        code, _, err = gm(command, "--jobs", str(jobs), *preset, "-o", str(tmp_path / command))
        assert code == 0, err
        for k, (_, args) in enumerate(pairs):
            single = tmp_path / f"{command}-single{k}"
            code, _, err = gm(command, *preset, *args, "-o", str(single))  # the per-job values win
            assert code == 0, err
            same_files(tmp_path / command / f"job-{k:06d}", single, video=True)
        assert loads.count(name) == 1 + len(pairs)  # one for the batch, one per single run


def run_gm(args: list[str], env: dict[str, str], **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "commands.app", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def subprocess_env(checkpoints: Path) -> dict[str, str]:
    return {**os.environ, "GM_CHECKPOINTS": str(checkpoints), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1"}


@pytest.mark.slow
def test_kill_9_mid_batch_then_resume(tmp_path: Path, checkpoints: Path) -> None:
    """The real command killed after its first finished job: the re-run does the rest, each job once."""
    lines = [{"prompt": f"object {k}", "seed": k} for k in range(6)]
    jobs = write_jobs(tmp_path / "jobs.jsonl", lines)
    out = tmp_path / "out"
    args = ["txt2img", "--jobs", str(jobs), "--preset", SD21, "--device", "cpu", "--steps", "20", "-o", str(out), "-q"]
    env = subprocess_env(checkpoints)
    proc = run_gm(args, env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / manifest.MANIFEST).is_file() and manifest.read_records(out / manifest.MANIFEST):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    killed = proc.returncode == -signal.SIGKILL
    first = {r["job"] for r in manifest.read_records(out / manifest.MANIFEST)}
    assert killed and 0 < len(first) < len(lines)
    done = run_gm(args, env)
    stdout, stderr = done.communicate(timeout=120)
    assert done.returncode == 0, stderr
    records = manifest.read_records(out / manifest.MANIFEST)
    names = [r["job"] for r in records]
    assert sorted(names) == [f"job-{k:06d}" for k in range(6)]  # no duplicate, none lost
    assert len(stdout.split()) == len(lines) - len(first)  # the re-run wrote only the rest
    assert sorted(p.name for p in out.iterdir()) == sorted([*names, manifest.MANIFEST])  # no temporary left
    for r in records:
        assert [p.name for p in (out / r["job"]).iterdir()] == ["000000.png"]


@pytest.mark.slow
def test_torchrun_two_ranks_split_the_jobs(tmp_path: Path, checkpoints: Path) -> None:
    lines = [{"prompt": f"object {k}", "seed": k} for k in range(4)] + ["a plain prompt"]
    jobs = write_jobs(tmp_path / "jobs.jsonl", lines)
    env = subprocess_env(checkpoints)
    common = ["txt2img", "--jobs", str(jobs), "--preset", SD21, "--device", "cpu", "-q"]
    one = run_gm([*common, "-o", str(tmp_path / "one")], env)
    torchrun = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                               "-m", "commands.app", *common, "-o", str(tmp_path / "two")],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert one.wait(timeout=120) == 0, one.stderr.read() if one.stderr else ""
    assert torchrun.returncode == 0, torchrun.stderr[-3000:]
    records = manifest.read_records(tmp_path / "two" / manifest.MANIFEST)
    assert sorted(r["job"] for r in records) == [f"job-{k:06d}" for k in range(5)]  # each once
    assert {r["rank"] for r in records} == {0, 1}
    for r in records:
        same_files(tmp_path / "two" / r["job"], tmp_path / "one" / r["job"])
