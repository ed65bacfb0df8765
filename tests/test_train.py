"""gm.train units: LR schedules, EMA, loss wiring, data formats, checkpoints, the shipped presets."""

from __future__ import annotations

import errno
import gzip
import io
import json
import math
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gm import presets
from gm.errors import CheckpointError, InputError, PresetError, UsageError
from gm.train import checkpoint, formats
from gm.train.config import DataConfig, TrainConfig, data_config, train_config
from gm.train.data import MapBatches, open_dataset
from gm.train.ema import EMA
from gm.train.schedules import lr_factor
from gm.train.tars import TarBatches

# --- LR schedules -------------------------------------------------------------------------------


def test_warmup_cosine_values() -> None:
    cfg = TrainConfig(lr_schedule="warmup_cosine", warmup_steps=(10,), f_start=(0.0,), f_max=(1.0,),
                      f_min=(0.1,), cycle_lengths=(110.0,))
    f = lr_factor(cfg)
    assert f(0) == 0.0 and f(5) == pytest.approx(0.5)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)))
    assert f(110) == pytest.approx(0.1) and f(10_000) == pytest.approx(0.1)


def test_linear_cycles_and_past_end() -> None:
    # LambdaLinearScheduler as the imagenet config uses it, plus a finite two-cycle case
    cfg = TrainConfig(lr_schedule="linear_cycles", warmup_steps=(10000,), cycle_lengths=(1e13,),
                      f_start=(1e-6,), f_max=(1.0,), f_min=(1.0,))
    f = lr_factor(cfg)
    assert f(0) == pytest.approx(1e-6) and f(5000) == pytest.approx(0.5 + 0.5e-6)
    assert f(20000) == pytest.approx(1.0)
    two = TrainConfig(lr_schedule="linear_cycles", warmup_steps=(0, 10), cycle_lengths=(100.0, 100.0),
                      f_start=(0.0, 0.0), f_max=(1.0, 2.0), f_min=(0.0, 0.5))
    g = lr_factor(two)
    assert g(50) == pytest.approx(0.5)  # (100 - 50) / 100
    assert g(105) == pytest.approx(1.0)  # cycle 2, warm-up 5/10 of the way to 2.0
    assert g(150) == pytest.approx(0.5 + 1.5 * 0.5)
    assert g(200) == pytest.approx(0.5)
    assert g(10**6) == pytest.approx(0.5)  # the reference crashes here (docs/reference.md §8.35)


def test_cosine_cycles_past_end() -> None:
    cfg = TrainConfig(lr_schedule="cosine_cycles", warmup_steps=(0,), cycle_lengths=(100.0,),
                      f_start=(0.0,), f_max=(1.0,), f_min=(0.2,))
    f = lr_factor(cfg)
    assert f(50) == pytest.approx(0.6)
    assert f(5000) == pytest.approx(0.2)


# --- EMA ----------------------------------------------------------------------------------------


def test_ema_decay_and_update() -> None:
    lin = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(0.0)
    ema = EMA(lin, decay=0.9999)
    with torch.no_grad():
        lin.weight.fill_(1.0)
    ema.update(lin)  # n = 1: decay 2/11 -> shadow = 0 + (1 - 2/11) * (1 - 0)
    assert ema.shadow["weight"][0, 0].item() == pytest.approx(9 / 11)
    ema.update(lin)  # n = 2: decay 3/12
    assert ema.shadow["weight"][0, 0].item() == pytest.approx(9 / 11 + 0.75 * (2 / 11))
    ema.num_updates = 10**7
    assert ema.current_decay() == 0.9999


def test_per_class_accuracy() -> None:
    from gm.train.classifier import per_class_accuracy

    class Fixed(torch.nn.Module):  # predicts the class stored in the first pixel
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.one_hot(x[:, 0, 0, 0].long(), 3).float()

    samples = torch.tensor([0, 0, 1, 2, 2, 1], dtype=torch.float32)[:, None, None, None]
    acc = per_class_accuracy(Fixed(), samples, torch.tensor([0, 0, 1, 1, 2, 2]), 3)
    assert acc == {"0": 1.0, "1": 0.5, "2": 0.5, "mean": round(4 / 6, 4)}


# --- loss wiring --------------------------------------------------------------------------------


def _tiny_preset(tmp_path: Path, extra_train: str = "", extra_data: str = "") -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY.replace("#TRAIN", extra_train).replace("#DATA", extra_data))
    return path


TINY = """
name = "tiny"
family = "train"

[network]
arch = "unet"
in_channels = 1
out_channels = 1
model_channels = 32
attention_resolutions = []
num_res_blocks = 1
channel_mult = [1]
num_head_channels = 32
num_classes = "sequential"
adm_in_channels = 32

[[conditioner]]
kind = "class"
input = "cls"
embed_dim = 32
n_classes = 10
ucg_rate = 0.3

[denoiser]
kind = "continuous"
scaling = "edm"
sigma_data = 1.0

[sampler]
name = "euler"
steps = 2
discretization = "edm"

[guider]
kind = "vanilla"
scale = 3.0

[train]
lr = 1e-3
max_steps = 12
log_every = 2
checkpoint_every = 4
sample_every = 0
samples_per_class = 1
#TRAIN

[data]
kind = "digits"
batch_size = 8
image_size = 8
num_examples = 64
#DATA
"""


def test_loss_matches_closed_form(tmp_path: Path) -> None:
    from gm.diffusion.training import edm_weighting, sample_sigmas_edm
    from gm.train.model import DiffusionObjective, build_train_engine, condition, draw

    preset = presets.load(str(_tiny_preset(tmp_path)))
    cfg = train_config(preset)
    torch.manual_seed(0)
    engine = build_train_engine(preset, cfg)
    obj = DiffusionObjective(engine, preset, cfg)
    batch = {"jpg": torch.rand(4, 1, 8, 8) * 2 - 1, "cls": torch.tensor([0, 1, 2, 3])}
    gen = torch.Generator().manual_seed(5)
    d = draw(cfg, engine, 4, (1, 8, 8), 0, 1, gen, 1000)
    ref = torch.Generator().manual_seed(5)
    assert torch.equal(d.sigma, sample_sigmas_edm(4, -1.2, 1.2, generator=ref))
    assert torch.equal(d.noise, torch.randn((4, 1, 8, 8), generator=ref))
    assert torch.equal(d.keep[0], torch.bernoulli(torch.full((4,), 0.7), generator=ref))
    loss = obj(batch, d)
    cond = condition(engine, batch, d.keep)
    dropped = d.keep[0] == 0
    assert torch.all(cond["vector"][dropped] == 0)
    den = obj.denoiser(batch["jpg"] + d.noise * d.sigma[:, None, None, None], d.sigma, cond)
    w = edm_weighting(d.sigma, 1.0)[:, None, None, None]
    expected = (w * (den - batch["jpg"]) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(loss, expected)
    # l1 and the discrete sigma sampler
    cfg1 = train_config(presets.load(str(_tiny_preset(tmp_path, 'loss_type = "l1"\nsigma_sampler = "discrete"'))))
    d1 = draw(cfg1, engine, 4, (1, 8, 8), 0, 1, torch.Generator().manual_seed(1), 1000)
    from gm.diffusion.schedules import ddpm_sigma_table

    assert all(any(torch.isclose(s, ddpm_sigma_table())) for s in d1.sigma)


def test_ddp_slices_equal_global_draw(tmp_path: Path) -> None:
    from gm.train.model import build_train_engine, draw

    preset = presets.load(str(_tiny_preset(tmp_path)))
    cfg = train_config(preset)
    engine = build_train_engine(preset, cfg)
    full = draw(cfg, engine, 8, (1, 8, 8), 0, 1, torch.Generator().manual_seed(3), 1000)
    half = [draw(cfg, engine, 8, (1, 8, 8), r, 2, torch.Generator().manual_seed(3), 1000) for r in (0, 1)]
    assert torch.equal(torch.cat([h.noise for h in half]), full.noise)
    assert torch.equal(torch.cat([h.sigma for h in half]), full.sigma)


# --- data formats -------------------------------------------------------------------------------


def _write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    raw = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx(tmp_path: Path, gz: bool) -> None:
    folder = tmp_path / "mnist"
    folder.mkdir()
    images = np.random.default_rng(0).integers(0, 256, (20, 28, 28), dtype=np.uint8)
    labels = np.arange(20, dtype=np.uint8) % 10
    suffix = ".gz" if gz else ""
    _write_idx(folder / f"train-images-idx3-ubyte{suffix}", images, gz)
    _write_idx(folder / f"train-labels-idx1-ubyte{suffix}", labels, gz)
    x, y = formats.load_mnist(str(folder))
    assert x.shape == (20, 1, 28, 28) and np.array_equal(x[:, 0], images)
    assert y.dtype == np.int64 and y.tolist() == labels.tolist()
    ds = open_dataset(DataConfig(kind="mnist", root=str(folder)), 0)
    b = ds.get(torch.tensor([3]))
    assert b["jpg"].min() >= -1 and b["jpg"].max() <= 1 and b["cls"].item() == 3


def test_mnist_missing_and_corrupt(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="gm download mnist"):
        formats.load_mnist(str(tmp_path / "nothing"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train-images-idx3-ubyte").write_bytes(b"\x12\x34\x08\x03" + b"\x00" * 20)
    _write_idx(bad / "train-labels-idx1-ubyte", np.zeros(2, np.uint8), False)
    with pytest.raises(InputError, match="not an IDX"):
        formats.load_mnist(str(bad))
    _write_idx(bad / "train-images-idx3-ubyte", np.zeros((2, 28, 28), np.uint8), False)
    (bad / "train-images-idx3-ubyte").write_bytes((bad / "train-images-idx3-ubyte").read_bytes()[:-5])
    with pytest.raises(InputError, match="IDX header says"):
        formats.load_mnist(str(bad))


def test_cifar_batches_and_pickle_guard(tmp_path: Path) -> None:
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        batch = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [i % 10] * 4}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=2))
    x, y = formats.load_cifar10(str(tmp_path / "cifar10"))
    assert x.shape == (20, 3, 32, 32) and y.tolist()[:4] == [1, 1, 1, 1]

    class Evil:
        def __reduce__(self):  # noqa: ANN204
            return (print, ("pwned",))

    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(InputError, match="refusing to load builtins.print"):
        formats.load_cifar10(str(tmp_path / "cifar10"))
    with pytest.raises(InputError, match="gm download cifar10"):
        formats.load_cifar10(str(tmp_path / "none"))


def test_image_folder(tmp_path: Path) -> None:
    for c, color in (("cat", 10), ("dog", 200)):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.new("RGB", (40, 30), (color, color, color)).save(tmp_path / c / f"{i}.png")
    ds = open_dataset(DataConfig(kind="folder", root=str(tmp_path), image_size=16), 0)
    assert len(ds) == 6 and ds.classes == ["cat", "dog"]
    item = ds[4]
    assert item["jpg"].shape == (3, 16, 16) and item["cls"] == 1
    assert item["original_size_as_tuple"].tolist() == [30, 40] and item["crop_coords_top_left"].tolist() == [0, 2]
    batches = list(MapBatches(ds, 2, seed=0).iterate(0, 1))
    assert len(batches) == 2 and batches[0]["jpg"].shape == (2, 3, 16, 16)


def _write_shard(path: Path, start: int, n: int) -> None:
    with tarfile.open(path, "w") as tar:
        for i in range(start, start + n):
            buf = io.BytesIO()
            Image.new("RGB", (12, 10), (i, 0, 0)).save(buf, format="PNG")
            for ext, data in (("png", buf.getvalue()), ("cls", str(i % 10).encode()),
                              ("json", json.dumps({"caption": f"image {i}"}).encode())):
                info = tarfile.TarInfo(f"{i:06d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_webdataset_tars(tmp_path: Path) -> None:
    _write_shard(tmp_path / "a.tar", 0, 7)
    _write_shard(tmp_path / "b.tar", 7, 7)
    shards = sorted(tmp_path.glob("*.tar"))
    src = TarBatches(shards, 4, seed=1, size=8, channels=3, shuffle_buffer=5)
    batches = list(src.iterate(0, 0))
    assert len(batches) == 3  # 14 samples, drop the last partial batch
    seen = torch.cat([b["cls"] for b in batches])
    assert len(seen) == 12 and batches[0]["jpg"].shape == (4, 3, 8, 8)
    assert batches[0]["txt"][0].startswith("image ")
    assert torch.equal(list(src.iterate(0, 2))[0]["jpg"], batches[2]["jpg"])  # resume skips exactly
    assert not torch.equal(list(src.iterate(1, 0))[0]["jpg"], batches[0]["jpg"])  # new epoch, new order
    ranks = [list(TarBatches(shards, 4, 1, 8, 3, shuffle_buffer=5, rank=r, world=2).iterate(0, 0)) for r in (0, 1)]
    assert torch.equal(torch.cat([ranks[0][1]["jpg"], ranks[1][1]["jpg"]]), batches[1]["jpg"])


# --- checkpoints --------------------------------------------------------------------------------


def test_checkpoint_disk_full_keeps_previous(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lin = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(lin.parameters())
    lin(torch.ones(1, 3)).sum().backward()
    opt.step()
    folder = tmp_path / "checkpoints"
    gen = torch.Generator().manual_seed(0)
    extra = {"rng": checkpoint.rng_state(gen)}
    first = checkpoint.save(folder, checkpoint.Saved(1, 0, 1, extra), checkpoint.model_tensors(lin), None, opt, 2)

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", full)
    with pytest.raises(CheckpointError, match="no space left on device in .*checkpoints.*about 104 bytes needed"):
        checkpoint.save(folder, checkpoint.Saved(2, 0, 2, extra), checkpoint.model_tensors(lin), None, opt, 2)
    assert checkpoint.complete(folder) == [first]
    assert [p.name for p in folder.iterdir()] == [first.name]  # no temporary left behind
    state, model, ema, opt_t = checkpoint.load(first)
    assert state["step"] == 1 and torch.equal(model["weight"], lin.weight.detach())
    opt2 = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters())
    checkpoint.load_optimizer(opt2, opt_t, state["optimizer"])
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_disk_full_mid_run_keeps_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop's side: a failed write stops the run with one error; --resume continues from the last good one."""
    from gm.train.loop import train
    from gm.train.run import TrainOptions

    monkeypatch.chdir(tmp_path)
    _tiny_preset(tmp_path)  # checkpoints every 4 of 12 steps
    real = checkpoint.save_file

    def save_file(tensors: dict, path: str) -> None:
        if "step-00000008" in path:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(tensors, path)

    monkeypatch.setattr(checkpoint, "save_file", save_file)
    with pytest.raises(CheckpointError, match="no space left on device.*the previous checkpoint is intact"):
        train(TrainOptions(preset="tiny.toml", out="run", device="cpu"))
    folder = tmp_path / "run" / "checkpoints"
    assert [p.name for p in folder.iterdir()] == ["step-00000004"]
    monkeypatch.setattr(checkpoint, "save_file", real)
    result = train(TrainOptions(resume="run", device="cpu"))
    assert result.step == 12 and [p.name for p in checkpoint.complete(folder)] == ["step-00000008", "step-00000012"]
    for wrong in (TrainOptions(resume="run", out="elsewhere"), TrainOptions(preset="mnist-cond", resume="run")):
        with pytest.raises(UsageError, match="--out with --resume|is a tiny run, not mnist-cond"):
            train(wrong)
    assert not (tmp_path / "elsewhere").exists()


def test_no_checkpoint_to_resume(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint"):
        checkpoint.latest(tmp_path)


# --- presets ------------------------------------------------------------------------------------

EXPECTED_PARAMS = {  # docs/reference.md §4.3 [verified]
    "mnist": 2.57, "mnist-cond": 2.60, "mnist-cond-discrete-eps": 2.60, "mnist-cond-l1": 2.60,
    "mnist-cond-ema": 2.60, "cifar10-cond": 2.60, "imagenet-f8-cond": 407.3, "txt2img-clipl": 863.5,
}


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_training_presets(name: str) -> None:
    from gm.models.build import build_network, validate

    preset = presets.load(name)
    assert preset.family == "train"
    validate(preset)
    train_config(preset)
    data_config(preset)
    with torch.device("meta"):
        net = build_network(preset)
    millions = sum(p.numel() for p in net.parameters()) / 1e6
    assert millions == pytest.approx(EXPECTED_PARAMS[name], abs=0.051)


def test_discrete_eps_keeps_reference_scaling() -> None:
    p = presets.load("mnist-cond-discrete-eps")
    assert p.denoiser.kind == "discrete" and p.denoiser.scaling == "edm" and p.denoiser.sigma_data == 0.5


def test_unknown_train_key(tmp_path: Path) -> None:
    preset = presets.load(str(_tiny_preset(tmp_path, "learning_rat = 3")))
    with pytest.raises(PresetError, match="unknown key 'learning_rat'.*valid keys"):
        train_config(preset)


# --- latent + text presets on tiny data (txt2img-clipl's structure, tiny sizes) -----------------

TEXT_LATENT = """
name = "tiny-txt2img"
family = "train"

[network]
arch = "unet"
in_channels = 4
out_channels = 4
model_channels = 32
attention_resolutions = [1]
num_res_blocks = 1
channel_mult = [1]
num_head_channels = 32
num_classes = "sequential"
adm_in_channels = 48
transformer_depth = 1
context_dim = 32

[vae]
arch = "kl"
scale_factor = 0.13025
ch = 32
ch_mult = [1, 1]
num_res_blocks = 1

[[conditioner]]
kind = "clip_l_text"
input = "txt"
layer = "last"
output = "crossattn"
pooled_output = "vector"
ucg_rate = 0.1
legacy_ucg_value = ""
hidden_size = 32
intermediate_size = 64
num_hidden_layers = 2
num_attention_heads = 2

[[conditioner]]
kind = "scalar"
input = "original_size_as_tuple"
outdim = 4
ucg_rate = 0.1

[[conditioner]]
kind = "scalar"
input = "crop_coords_top_left"
outdim = 4
ucg_rate = 0.1

[denoiser]
kind = "discrete"
scaling = "eps"

[sampler]
name = "euler"
steps = 2
discretization = "legacy_ddpm"

[guider]
kind = "vanilla"
scale = 7.5

[train]
lr = 1e-3
max_steps = 2
sigma_sampler = "discrete"
weighting = "eps"
lr_schedule = "linear_cycles"
warmup_steps = [1]
cycle_lengths = [10000000000000.0]
f_start = [1e-6]
f_max = [1.0]
f_min = [1.0]
sample_every = 0
sample_prompts = ["a red square"]
vae_checkpoint = "vae.safetensors"
clip_checkpoint = "clip.safetensors"

[data]
kind = "webdataset"
urls = ["shards/*.tar"]
batch_size = 4
image_size = 8
shuffle_buffer = 4
"""


def test_text_latent_preset_trains_with_pretrained_parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """txt2img-clipl's recipe (frozen VAE + frozen CLIP-L from their own files, webdataset captions)."""
    from safetensors.torch import load_file, save_file

    from gm.models.build import vae_config
    from gm.models.clip_text import CLIPTextConfig, CLIPTextModel
    from gm.train.loop import train
    from gm.train.run import TrainOptions

    monkeypatch.chdir(tmp_path)
    (tmp_path / "shards").mkdir()
    _write_shard(tmp_path / "shards" / "a.tar", 0, 9)
    (tmp_path / "tiny.toml").write_text(TEXT_LATENT)
    spec = vae_config(presets.load(str(tmp_path / "tiny.toml")))
    torch.manual_seed(1)
    save_file(spec[1](spec[0]).state_dict(), str(tmp_path / "vae.safetensors"))
    clip = CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2))
    # HF's model.safetensors also holds the vision tower and the projections: those are skipped.
    save_file({**clip.state_dict(), "vision_model.post_layernorm.weight": torch.ones(4),
               "text_projection.weight": torch.ones(2, 2), "text_model.embeddings.position_ids": torch.arange(77)[None]},
              str(tmp_path / "clip.safetensors"))

    result = train(TrainOptions(preset="tiny.toml", out="run", device="cpu"))
    assert result.step == 2 and result.grid is not None and result.grid.is_file()
    saved = load_file(str(tmp_path / "run" / "checkpoints" / "step-00000002" / "model.safetensors"))
    prefix = "conditioner.embedders.0.transformer."
    for key, value in clip.state_dict().items():  # the frozen text tower is CLIP's, unchanged by training
        assert torch.equal(saved[prefix + key], value), key
    assert not any(k.startswith("first_stage_model.") for k in saved)
    with pytest.raises(CheckpointError, match="CLIP-L text encoder checkpoint not found.*gm download clip-vit-large-patch14"):
        train(TrainOptions(preset="tiny.toml", out="run2", device="cpu", overrides=("train.clip_checkpoint='nope'",)))
    assert not (tmp_path / "run2").exists()
