"""Released .safetensors -> modules: find the file, check it, mmap it into a meta-built model.

The reference loads every checkpoint non-strictly (`strict` off) and only prints what
did not match (docs/reference.md, "Where gm differs", item 1). Here loading is strict: the file's tensor names and
shapes are compared with the model's before anything is read, and any difference is one error
naming the preset, the file, the preset the file does fit (gm.detect) and a few offending tensors. Modules are built on the `meta`
device; tensors are read through safetensors' mmap straight to the target device and dtype
and attached with `load_state_dict(assign=True)`: no random init, no second copy in RAM.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Callable, Iterable
from pathlib import Path

from gm.errors import CheckpointError
from gm.presets import Preset, available

# LDM-era SD 2.x files keep the OpenCLIP text encoder under its old attribute name. This is
# the one key-layout rename gm needs (tests/manifests/README.md, "LDM layout vs sgm layout").
LDM_RENAMES = (("cond_stage_model.model.", "conditioner.embedders.0.model."),)
# DDPM schedule buffers that LDM files carry and sgm recomputes.
LDM_SCHEDULE_BUFFERS = frozenset(
    {
        "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
        "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
        "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
        "posterior_mean_coef1", "posterior_mean_coef2", "model_ema.decay", "model_ema.num_updates",
    }
)
_SHOW = 2  # offending names shown per category (the counts say the rest)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


def find_checkpoint(preset: Preset, explicit: str | Path | None = None) -> Path:
    """The checkpoint of `preset`: --checkpoint (a path, or a file name/stem found in the checkpoint
    folders), else the release file by name in $GM_CHECKPOINTS / ./checkpoints (recursively) or
    in the Hugging Face cache (gm.locate)."""
    from gm import locate

    if explicit:
        path = Path(explicit).expanduser()
        if path.is_file():
            return path
        found = locate.find_in_folders(str(explicit), by_stem=True) if path.name == str(explicit) else None
        if found is not None:
            return found
        where = ", ".join(str(f) for f in locate.checkpoint_folders()) or "no checkpoint folders"
        raise CheckpointError(f"checkpoint not found: {path} (not a file, nor a name in {where})",
                              "check the --checkpoint path, or add its folder to GM_CHECKPOINTS")
    if preset.checkpoint is None:
        raise CheckpointError(f"preset '{preset.name}' names no checkpoint file")
    spec = preset.checkpoint
    found = locate.find_model_file(spec.file, spec.repo)
    if found is not None:
        return found
    folders = [str(f) for f in locate.checkpoint_folders()] or [str(Path.cwd() / "checkpoints")]
    looked = ", ".join(folders) + (", the Hugging Face cache" if spec.repo else "")
    downloadable = spec.repo and preset.name in available()  # what `gm download` offers
    raise CheckpointError(
        f"checkpoint {spec.file} not found (looked in {looked})",
        f"run `gm download {preset.name}`, or add the folder that holds it to GM_CHECKPOINTS" if downloadable
        else "put the file in a GM_CHECKPOINTS folder, or pass --checkpoint FILE",
    )


# Bytes per element of the safetensors dtypes (a header entry's data must be shape x this long).
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def _entry_problem(entry: object) -> str:
    """What is wrong with one header entry ("" if nothing): it must be {dtype, shape, data_offsets}
    with a known dtype, whole non-negative numbers, and exactly the bytes its shape needs."""
    if not isinstance(entry, dict):
        return f"a {type(entry).__name__}, not a table of dtype, shape and data_offsets"
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        return f"unknown dtype {dtype!r}"

    def counts(v: object, n: int | None = None) -> bool:
        return isinstance(v, list) and (n is None or len(v) == n) and all(
            isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)

    if not counts(shape):
        return f"shape {shape!r} is not a list of sizes"
    if not counts(offsets, 2) or offsets[0] > offsets[1]:
        return f"data_offsets {offsets!r} is not [begin, end]"
    need = DTYPE_BYTES[dtype] * math.prod(shape)
    if offsets[1] - offsets[0] != need:
        return f"data_offsets span {offsets[1] - offsets[0]} bytes, its {dtype} shape {shape} needs {need}"
    return ""


def read_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Tensor name -> (dtype, shape) from a safetensors header; truncated/corrupt files raise."""
    if path.suffix in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{path.name} is a pickle checkpoint; gm loads .safetensors only",
            "use the .safetensors release file, or pass --unsafe-pickle if you trust this file",
        )
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: not a safetensors file (only {size} bytes)", "download it again")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > 100_000_000:
            raise CheckpointError(f"{path}: corrupt or truncated safetensors header", "download it again")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise CheckpointError(f"{path}: corrupt safetensors header", "download it again") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: safetensors header is JSON but not a tensor table (a {type(header).__name__})",
                              "download it again (gm download --verify NAME checks it)")
    header.pop("__metadata__", None)
    for key, entry in header.items():
        problem = _entry_problem(entry)
        if problem:
            raise CheckpointError(f"{path}: safetensors header is JSON but not a tensor table (tensor {key!r}: "
                                  f"{problem})", "download it again (gm download --verify NAME checks it)")
    end = max((int(v["data_offsets"][1]) for v in header.values()), default=0)
    if 8 + n + end > size:
        missing = 8 + n + end - size
        raise CheckpointError(
            f"{path}: truncated ({missing} bytes missing of {8 + n + end})", "download it again"
        )
    return {k: (v["dtype"], tuple(v["shape"])) for k, v in header.items()}


def map_key(key: str, layout: str) -> str | None:
    """Released-file key -> module key; None for tensors the layout says to drop."""
    if layout == "ldm":
        if key in LDM_SCHEDULE_BUFFERS or key.startswith("model_ema."):
            return None
        for old, new in LDM_RENAMES:
            if key.startswith(old):
                return new + key[len(old):]
    return key


def compare(
    expected: dict[str, tuple[int, ...]],
    found: dict[str, tuple[int, ...]],
    optional: Iterable[str] = (),
) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, wrong-shape descriptions) between a model and a file."""
    optional = set(optional)
    missing = sorted(k for k in expected if k not in found)
    unexpected = sorted(k for k in found if k not in expected and k not in optional)
    shapes = sorted(
        f"{k} (file {list(found[k])}, model {list(expected[k])})"
        for k in expected
        if k in found and tuple(found[k]) != tuple(expected[k])
    )
    return missing, unexpected, shapes


def mismatch_message(label: str, missing: list[str], unexpected: list[str], shapes: list[str],
                     fits: str = "") -> str:
    """One line: what the file is instead (`fits`, from gm.detect.suggestion) first, then counts
    and the first few tensors of each kind."""
    parts = []
    show = 1 if fits else _SHOW  # the family is the news; the tensors only illustrate it
    for what, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if names:
            more = f", … +{len(names) - show} more" if len(names) > show else ""
            parts.append(f"{len(names)} {what}: {', '.join(names[:show])}{more}")
    return f"{label} does not match: " + (f"{fits}; " if fits else "") + "; ".join(parts)


def matched_keys(module, header: dict[str, tuple[str, tuple[int, ...]]], *, layout: str = "sgm",
                 optional: Iterable[str] = (), label: str) -> dict[str, str]:
    """Module key -> file key, after checking that names and shapes match exactly (else one error)."""
    renamed = {}
    for key in header:
        new = map_key(key, layout)
        if new is not None:
            renamed[new] = key
    expected = {k: tuple(v.shape) for k, v in module.state_dict(keep_vars=True).items()}
    found = {k: header[src][1] for k, src in renamed.items()}
    missing, unexpected, shapes = compare(expected, found, optional)
    if missing or unexpected or shapes:
        from gm.detect import suggestion

        current = re.match(r"(?:preset )?([\w.+-]+): ", label)  # build.py's labels: "preset NAME: FILE"
        fits = suggestion(header, current.group(1) if current else "") if any(
            k.startswith("model.diffusion_model.") for k in header) else ""
        raise CheckpointError(
            mismatch_message(label, missing, unexpected, shapes, fits),
            "pass the -p it names, or omit -p" if fits else
            "is this the right checkpoint for the preset? see `gm download --list`",
        )
    return {k: renamed[k] for k in expected}


def load_into(
    module,
    path: Path,
    *,
    layout: str = "sgm",
    optional: Iterable[str] = (),
    device="cpu",
    dtype_for: Callable[[str], object] | None = None,
    label: str = "",
    unsafe_pickle: bool = False,
) -> None:
    """Strictly load the checkpoint at `path` into `module` (built on the meta device).

    `dtype_for(key)` picks each tensor's dtype (None = keep the file's). Floating tensors are
    converted on the way from the mmap to `device`. Pickle files are refused unless
    `unsafe_pickle` (then read with `weights_only=True`).
    """
    import torch

    label = f"{label or path}: {path.name}"
    if unsafe_pickle and path.suffix in PICKLE_SUFFIXES:
        pickled = load_pickle_state(path)
        header = {k: (str(v.dtype), tuple(v.shape)) for k, v in pickled.items()}
        get = pickled.__getitem__
    else:
        header = read_header(path)
        get = None
    keys = matched_keys(module, header, layout=layout, optional=optional, label=label)

    def convert(key: str, tensor):
        dtype = dtype_for(key) if dtype_for is not None else None
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        return tensor.to(device)

    try:
        if get is not None:
            state = {key: convert(key, get(src)) for key, src in keys.items()}
        else:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt", device=str(device)) as f:
                state = {key: convert(key, f.get_tensor(src)) for key, src in keys.items()}
    except (OSError, RuntimeError) as err:
        raise CheckpointError(f"{path}: cannot read tensors ({err})", "download it again") from None
    module.load_state_dict(state, strict=True, assign=True)
    materialize_buffers(module, torch.device(device))


def materialize_buffers(module, device) -> None:
    """Give buffers that are still on `meta` after loading (non-persistent ones) real values.

    A module that owns such buffers defines `init_buffers(device)`; any meta tensor left after
    that is a bug in the model code and raises.
    """
    for sub in module.modules():
        init = getattr(sub, "init_buffers", None)
        if init is not None and any(b.is_meta for b in sub.buffers(recurse=False)):
            init(device)
    left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:
        raise CheckpointError(f"internal error: tensors left unmaterialised after loading: {left[:_SHOW]}")


def load_pickle_state(path: Path) -> dict:
    """The tensors of a .ckpt/.pt state dict, only when the user asked for it (--unsafe-pickle).
    Zip-format files (torch >= 1.6) are mmapped; legacy-format ones cannot be and are read whole."""
    import zipfile

    import torch

    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as err:  # pickle, zip and torch errors alike: the file is not a loadable state dict
        why = ("it holds objects other than tensors, which weights-only loading refuses"
               if "Weights only load failed" in str(err) else "corrupt, truncated or not a PyTorch checkpoint")
        raise CheckpointError(f"{path}: cannot read this pickle checkpoint: {why}",
                              "use the .safetensors release file, or download it again") from None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)} if isinstance(state, dict) else {}
    if not tensors:
        raise CheckpointError(f"{path}: holds no state dict of tensors", "use the .safetensors release file")
    return tensors
