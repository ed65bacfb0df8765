"""Device and precision choices, and the speed settings, in one place.

Nothing else in gm hard-codes CUDA (the reference script assumes it everywhere).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from gm.errors import UsageError

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass(frozen=True)
class Runtime:
    """Where and in which precision a model runs, and its memory policy (decided once per load)."""

    device: torch.device
    dtype: torch.dtype  # UNet and text/image encoders
    vae_dtype: torch.dtype
    low_vram: bool = False
    compile: bool = False

    @property
    def home(self) -> torch.device:
        """Where idle stages wait: the CPU in low-VRAM mode, else the compute device."""
        return torch.device("cpu") if self.low_vram else self.device


def runtime_for(perf: Any, device: str = "auto", dtype: str | None = None,
                low_vram: bool | None = None, compile: bool | None = None) -> Runtime:
    """The runtime of a preset's [perf] table (read duck-typed) with the user's choices over it."""
    perf = getattr(perf, "perf", perf)  # a whole preset works too
    target = pick_device(device)
    apply_speed_settings(target)
    vae = perf.vae_dtype
    return Runtime(
        device=target,
        dtype=pick_dtype(dtype or perf.dtype, target),
        vae_dtype=pick_dtype(vae, target, gpu_default="fp32") if vae != "auto" else torch.float32,
        low_vram=perf.low_vram if low_vram is None else low_vram,
        compile=perf.compile if compile is None else compile,
    )


@contextmanager
def on_device(module: Any, runtime: Runtime) -> Iterator[None]:
    """Run a stage on the compute device; in low-VRAM mode move it back afterwards."""
    if module is None or not runtime.low_vram:
        yield
        return
    module.to(runtime.device)
    try:
        yield
    finally:
        module.to("cpu")
        empty_cache(runtime.device)


def pick_device(name: str = "auto") -> torch.device:
    """`auto` picks cuda, then mps, then cpu; an explicit name must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is available", "use --device cpu or auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("--device mps: Apple MPS is not available", "use --device cpu or auto")
    try:
        target = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a device", "use auto, cuda, cuda:N, mps or cpu") from None
    if target.type == "cuda" and target.index is not None and target.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise UsageError(f"--device {name}: there is no CUDA GPU {target.index} ({count} found)",
                         f"use --device cuda:0{f' to cuda:{count - 1}' if count > 1 else ''}")
    return target


def pick_dtype(name: str, device: torch.device, gpu_default: str = "fp16") -> torch.dtype:
    """`auto`: the reference's low precision on a GPU (`gpu_default`), fp32 on the CPU."""
    if name == "auto":
        name = gpu_default if device.type in ("cuda", "mps") else "fp32"
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UsageError("this GPU has no bf16 support", "use --dtype fp16 or fp32")
    try:
        return DTYPES[name]
    except KeyError:
        raise UsageError(f"unknown dtype {name!r}", "use auto, fp16, bf16 or fp32") from None


def apply_speed_settings(device: torch.device) -> None:
    """TF32 matmuls/convolutions on Ampere+ GPUs (fp32 parts such as the VAE get faster)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


def compiled(fn: Callable[..., Any], device: torch.device) -> Callable[..., Any]:
    """`--compile`: torch.compile with static shapes (each new input shape compiles once).

    On the CPU the compiled function runs with inductor's weight freezing. Without it the
    generated code was slower than eager (SD 2.1 UNet step 2.2 s against 1.3 s: oneDNN re-lays
    out every convolution weight on every call); frozen, the weights are constants packed once,
    and the step took 0.5 s, at the price of a packed copy of the weights for each compiled
    shape (BENCHMARKS.md §7, bench/compile_variants.py). On a GPU the default (unfrozen) compile
    is kept.
    """
    compiled_fn = torch.compile(fn, dynamic=False)
    if device.type != "cpu":
        return compiled_fn
    from torch._inductor import config as inductor_config

    # Its "No CUDA runtime is found, using CUDA_HOME=..." line is noise for a CPU build.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)

    def frozen(*args: Any, **kwargs: Any) -> Any:
        with inductor_config.patch(freezing=True):  # read when a new shape is traced and compiled
            return compiled_fn(*args, **kwargs)

    return frozen


def free_memory(device: torch.device) -> int | None:
    """Bytes a CUDA device can still give this process, None elsewhere: the driver's free memory
    plus what PyTorch's caching allocator holds without using it (e.g. the UNet's freed
    activations before a decode), which the next allocations reuse."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(free + max(cached, 0))


def available_ram() -> int | None:
    """Bytes of RAM the kernel could hand out now (Linux MemAvailable), None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def cpu_generator(seed: int) -> torch.Generator:
    """All noise comes from a CPU generator and is moved to the device: same seed, same numbers."""
    return torch.Generator("cpu").manual_seed(int(seed))


def randn(shape: tuple[int, ...], generator: torch.Generator, device: torch.device,
          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device=device, dtype=dtype)
