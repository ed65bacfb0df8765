"""Devices, precision and seeds (gm/device.py, runtime_for): auto picks what is there, explicit
choices that cannot work are usage errors, and noise is the same numbers on every device."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gm import device as dev
from gm import presets
from gm.errors import UsageError
from gm.pipelines.common import runtime_for

TINY = str(Path(__file__).resolve().parent / "presets" / "tiny-sd21.toml")


def test_auto_picks_cuda_then_mps_then_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert dev.pick_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert dev.pick_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert dev.pick_device("auto") == torch.device("cuda")


def test_unavailable_or_unknown_devices_are_usage_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(UsageError, match="no CUDA GPU is available"):
        dev.pick_device("cuda")
    with pytest.raises(UsageError, match="MPS is not available"):
        dev.pick_device("mps")
    with pytest.raises(UsageError, match="'tpu' is not a device"):
        dev.pick_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert dev.pick_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(UsageError, match=r"no CUDA GPU 2 \(2 found\) \(use --device cuda:0 to cuda:1\)"):
        dev.pick_device("cuda:2")


def test_dtype_auto_is_half_on_gpus_fp32_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert dev.pick_dtype("auto", cpu) is torch.float32
    assert dev.pick_dtype("auto", gpu) is torch.float16
    assert dev.pick_dtype("auto", gpu, gpu_default="fp32") is torch.float32
    assert dev.pick_dtype("bf16", cpu) is torch.bfloat16
    with pytest.raises(UsageError, match="unknown dtype 'fp8'"):
        dev.pick_dtype("fp8", cpu)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    with pytest.raises(UsageError, match="no bf16 support"):
        dev.pick_dtype("bf16", gpu)


def test_noise_is_drawn_on_the_cpu_and_moved() -> None:
    """randn on any device = the CPU generator's numbers (so a seed gives one image everywhere)."""
    expected = torch.randn((2, 4, 3), generator=torch.Generator().manual_seed(5))
    meta = dev.randn((2, 4, 3), dev.cpu_generator(5), torch.device("meta"))
    assert meta.device.type == "meta" and meta.shape == (2, 4, 3)
    assert torch.equal(dev.randn((2, 4, 3), dev.cpu_generator(5), torch.device("cpu")), expected)
    half = dev.randn((2, 4, 3), dev.cpu_generator(5), torch.device("cpu"), torch.float16)
    assert torch.equal(half, expected.half())  # drawn in fp32, then cast: precision does not change the draw


def test_runtime_for_reads_the_perf_table_and_the_options() -> None:
    preset = presets.load(TINY)
    rt = runtime_for(preset, "cpu")
    assert (rt.device, rt.dtype, rt.vae_dtype, rt.low_vram, rt.home) == (
        torch.device("cpu"), torch.float32, torch.float32, False, torch.device("cpu"))
    tuned = presets.load(TINY, ["perf.dtype=bf16", "perf.vae_dtype=bf16", "perf.low_vram=true"])
    rt = runtime_for(tuned, "cpu")
    assert (rt.dtype, rt.vae_dtype, rt.low_vram) == (torch.bfloat16, torch.bfloat16, True)
    assert runtime_for(tuned, "cpu", dtype="fp32", low_vram=False).dtype is torch.float32


def test_free_gpu_memory_counts_what_the_allocator_caches(monkeypatch: pytest.MonkeyPatch) -> None:
    """After sampling, the UNet's freed activations sit in PyTorch's cache: the driver does not
    count them as free, but the decode's allocations will reuse them."""
    gib = 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (3 * gib, 80 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 12 * gib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 4 * gib)
    assert dev.free_memory(torch.device("cuda")) == 11 * gib
    assert dev.free_memory(torch.device("cpu")) is None


def test_available_ram_reads_meminfo() -> None:
    available = dev.available_ram()
    assert available is not None and 0 < available < 2**50
