"""gm train under bad data, divergence and messy resumes: one-line errors, no run folder after a
failed start, no endless loop, no repeated metrics, no silent change of the experiment."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from gm.errors import GmError, InputError, UsageError
from gm.train import checkpoint
from gm.train.config import DataConfig
from gm.train.data import FolderDataset, MapBatches, open_dataset
from gm.train.loop import train
from gm.train.run import TrainOptions
from gm.train.tars import TarBatches
from tests.test_train import TINY


def _preset(tmp_path: Path, data: str = "", train_extra: str = "") -> Path:
    text = TINY.replace("#TRAIN", train_extra).replace("#DATA", "")
    if data:
        text = text[:text.index("[data]")] + data
    path = tmp_path / "tiny.toml"
    path.write_text(text)
    return path


def _shard(path: Path, n: int) -> Path:
    with tarfile.open(path, "w") as tar:
        for i in range(n):
            buf = io.BytesIO()
            Image.new("L", (8, 8), i * 20).save(buf, format="PNG")
            for ext, data in (("png", buf.getvalue()), ("cls", str(i % 10).encode())):
                info = tarfile.TarInfo(f"{i:06d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def _tar_data(*shards: Path, batch: int = 8) -> str:
    urls = ", ".join(f'"{s}"' for s in shards)
    return f'[data]\nkind = "webdataset"\nurls = [{urls}]\nbatch_size = {batch}\nimage_size = 8\nchannels = 1\n'


@pytest.mark.parametrize("case", ["fewer than a batch", "empty", "truncated"])
def test_bad_shards_fail_at_start_without_run_folder(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    shard = _shard(tmp_path / "a.tar", {"fewer than a batch": 3, "empty": 0, "truncated": 20}[case])
    if case == "truncated":
        shard.write_bytes(shard.read_bytes()[:3000])
    _preset(tmp_path, _tar_data(shard))
    expected = {"fewer than a batch": "data: 3 samples in 1 shard(s) are fewer than one batch of 8",
                "empty": f"{shard}: empty tar shard (no samples)",
                "truncated": f"{shard}: not a readable tar shard ("}[case]
    with pytest.raises(InputError) as info:
        train(TrainOptions(preset="tiny.toml", out="run", device="cpu"))
    assert str(info.value).startswith(expected) and "\n" not in str(info.value)
    assert not (tmp_path / "run").exists()


def test_an_epoch_without_a_batch_stops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Were the start check passed (a shard that shrank since), the loop still cannot spin."""
    monkeypatch.chdir(tmp_path)
    _preset(tmp_path, _tar_data(_shard(tmp_path / "a.tar", 3)))
    monkeypatch.setattr(TarBatches, "check", lambda self: None)
    with pytest.raises(InputError, match="data: epoch 0 yielded no batch of 8"):
        train(TrainOptions(preset="tiny.toml", out="run", device="cpu"))


def _folder(tmp_path: Path, bad: str | None) -> Path:
    root = tmp_path / "images"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(5):
            Image.new("L", (10, 10), 30 * i).save(root / c / f"{i}.png")
    if bad:
        (root / "b" / bad).write_bytes(b"not an image at all")
    return root


def test_unreadable_image_in_folder_fails_at_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    root = _folder(tmp_path, "9.png")
    _preset(tmp_path, f'[data]\nkind = "folder"\nroot = "{root}"\nbatch_size = 4\nimage_size = 8\nchannels = 1\n'
                      "num_workers = 0\n")
    with pytest.raises(InputError) as info:
        train(TrainOptions(preset="tiny.toml", out="run", device="cpu"))
    assert str(info.value).startswith(f"{root / 'b' / '9.png'}: unreadable image (cannot identify image file")
    assert str(info.value).endswith("(remove or replace the file)") and not (tmp_path / "run").exists()


def test_unreadable_image_found_in_a_worker_is_one_line(tmp_path: Path) -> None:
    root = _folder(tmp_path, None)
    ds = open_dataset(DataConfig(kind="folder", root=str(root), image_size=8, channels=1), 0)
    assert isinstance(ds, FolderDataset)
    ds.check()
    ds.paths[3].write_bytes(b"\x89PNG broken later")  # e.g. a disk error after the start check
    with pytest.raises(InputError) as info:
        list(MapBatches(ds, 10, seed=0, num_workers=1).iterate(0, 0))
    assert str(info.value).startswith(f"{ds.paths[3]}: unreadable image (") and "\n" not in str(info.value)
    assert "Traceback" not in str(info.value) and "DataLoader" not in str(info.value)


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_resume_after_kill_tidies_and_does_not_repeat_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _preset(tmp_path)
    train(TrainOptions(preset="tiny.toml", out="run", device="cpu", max_steps=10))  # checkpoints 4, 8, 10
    run = tmp_path / "run"
    # what a kill -9 during the step-12 save of a longer run leaves: metrics past the checkpoint and a half folder
    with (run / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": 12, "loss": 0.5}) + "\n" + '{"step": 14, "lo')
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = run / "checkpoints" / f".step-00000012.tmp-{int(dead.stdout)}"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    result = train(TrainOptions(resume="run", device="cpu", max_steps=14))
    assert result.step == 14 and not stale.exists()
    records = _metrics(run)
    steps = [r["step"] for r in records if "loss" in r and not r.get("final")]
    assert steps == [2, 4, 6, 8, 10, 12, 14]  # each step once: the kill's lines went
    resume = next(r for r in records if r.get("resume"))
    assert resume == {"resume": True, "step": 10, "changed": {"train.max_steps": [10, 14]}}
    assert "max_steps = 14" in (run / "config.toml").read_text()


def test_resume_refuses_a_changed_architecture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    preset = _preset(tmp_path)
    train(TrainOptions(preset="tiny.toml", out="run", device="cpu", max_steps=4))
    preset.write_text(preset.read_text().replace("model_channels = 32", "model_channels = 16")
                      .replace("max_steps = 12", "max_steps = 8"))
    with pytest.raises(UsageError) as info:
        train(TrainOptions(preset="tiny.toml", resume="run", device="cpu"))
    assert str(info.value).startswith("--resume run: the run was started with other settings: "
                                      "network.model_channels (32 -> 16)")
    assert "max_steps" not in str(info.value)  # a safe change is not what is refused
    with pytest.raises(UsageError, match=r"data.batch_size \(8 -> 16\)"):
        train(TrainOptions(resume="run", device="cpu", batch_size=16))
    assert [r["step"] for r in _metrics(tmp_path / "run") if not r.get("final")] == [2, 4]  # nothing ran


def test_diverging_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _preset(tmp_path)
    train(TrainOptions(preset="tiny.toml", out="run", device="cpu", max_steps=8))
    with pytest.raises(GmError) as info:  # a learning rate no model survives
        train(TrainOptions(resume="run", device="cpu", max_steps=16, lr=1e30))
    folder = tmp_path / "run" / "checkpoints"
    assert str(info.value).startswith("training diverged: the loss is not finite (NaN/Inf) by step 10; "
                                      "the last good checkpoint is run/checkpoints/step-00000008 (resume with a lower lr "
                                      "(gm train --resume run --lr ...)")
    assert info.value.exit_code == 1
    assert [p.name for p in checkpoint.complete(folder)] == ["step-00000004", "step-00000008"]
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []
    assert all(r.get("loss") is None or r["loss"] == r["loss"] for r in _metrics(tmp_path / "run"))  # no NaN logged


@pytest.mark.parametrize(("override", "message"), [
    ("train.lr=nan", "--set train.lr: expected a finite number, got nan"),
    ("train.grad_clip=inf", "--set train.grad_clip: expected a finite number, got inf"),
    ("train.log_every=-5", "--set train.log_every: expected a number >= 0, got -5"),
    ("train.ema_decay=1.5", "--set train: ema_decay must be in [0, 1] and betas in [0, 1)"),
    ("data.num_workers=-1", "--set data.num_workers: expected a number >= 0, got -1"),
])
def test_numbers_checked_before_anything_runs(override: str, message: str, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _preset(tmp_path)
    with pytest.raises(UsageError) as info:
        train(TrainOptions(preset="tiny.toml", out="run", device="cpu", overrides=(override,)))
    assert str(info.value) == message and not (tmp_path / "run").exists()
