"""Live-bytes tracking at the dispatcher: what a run would hold on a device, computed on meta tensors.

Every aten op that a network runs passes through `MemoryTracker.__torch_dispatch__`. Each tensor it
returns is registered by its storage (a weak reference to the C++ StorageImpl), so views and in-place
results cost nothing extra and a tensor stops counting the moment Python drops its last reference,
exactly when a caching allocator would get the block back. After every op the live set is summed;
the largest sum is the phase's activation peak. Storages that existed before tracking began (the
weights, or tensors passed in) are never registered, so they are accounted for separately.

Attention is the one op whose memory depends on the kernel rather than on its inputs and outputs:
a fused kernel (flash / memory-efficient SDPA on a GPU, the flash kernel on the CPU) keeps only the
output and one float32 log-sum-exp per query row, while the math path materialises the score matrix
and its softmax, 2 * b * heads * q * k elements. Both are recorded: `peak` uses the fused figure and
`peak_math` the math one, from the same run. FLOPs come from torch's flop counter on the same
run; the attention share (4 * b * heads * q * k * d) is also kept apart.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.nn.modules import module as nn_module
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

aten = torch.ops.aten
SDPA_OPS = {
    aten.scaled_dot_product_attention.default,
    aten._scaled_dot_product_flash_attention_for_cpu.default,
}


@dataclass
class Peak:
    """The live set at the largest point of a tracked region."""

    bytes: int = 0  # activations + workspace
    activations: int = 0
    workspace: int = 0
    op: str = ""
    module: str = ""


@dataclass
class Tracked:
    """What one tracked region held: the fused-attention peak, the math-path peak, and FLOPs."""

    peak: Peak = field(default_factory=Peak)
    peak_math: Peak = field(default_factory=Peak)
    largest_scores: int = 0  # bytes of the largest single score matrix (math path)
    attention_flops: int = 0
    ops: int = 0


def sdpa_costs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[int, int, int]:
    """(fused workspace bytes, math-path workspace bytes, FLOPs) of one SDPA call on (..., N, D)."""
    *batch, n, d = q.shape
    rows = 1
    for s in batch:
        rows *= s
    m = k.shape[-2]
    lse = rows * n * 4  # float32 log-sum-exp per query row
    scores = rows * n * m
    # math path: the scaled q and k, the scores, their softmax and _safe_softmax's bool mask
    math = q.numel() * q.element_size() + k.numel() * k.element_size() + scores * (2 * q.element_size() + 1)
    flops = 2 * rows * n * m * d + 2 * rows * n * m * v.shape[-1]
    return lse, math, flops


def cpu_fused(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether torch's CPU SDPA takes its flash kernel (unit last-dim strides) or the math path."""
    return all(t.stride(-1) == 1 for t in (q, k, v))


CONV_OPS = {aten.convolution.default, aten._convolution.default, aten.conv2d.default, aten.conv3d.default}


def cpu_conv_workspace(func: Any, args: tuple) -> int:
    """Bytes torch's CPU convolution allocates inside the op: the unfold buffer of slow_conv3d
    (what conv3d takes) and of slow_conv2d, or oneDNN's blocked copies of weight and input."""
    x, weight = args[0], args[1]
    nd = weight.ndim - 2
    if func in (aten.conv2d.default, aten.conv3d.default):
        full = (*args, *([None] * 7))[:7]
        stride, padding, dilation, groups = (full[3] or [1] * nd, full[4] or [0] * nd, full[5] or [1] * nd,
                                             full[6] or 1)
        transposed = False
    else:
        stride, padding, dilation, transposed, groups = args[3], args[4], args[5], args[6], args[8]
    stride, padding, dilation = (_per_dim(v, nd) for v in (stride, padding, dilation))
    if transposed:
        return 0
    kernel = weight.shape[2:]
    out = [(size + 2 * p - dl * (k - 1) - 1) // st + 1
           for size, k, st, p, dl in zip(x.shape[2:], kernel, stride, padding, dilation)]
    one_by_one = all(k == 1 for k in kernel) and all(st == 1 for st in stride) and not any(padding)
    cols = x.shape[0] * (x.shape[1] // groups) * _prod(kernel) * _prod(out) * x.element_size()
    if x.ndim == 5:
        return cols
    n, c, h, w = x.shape
    mkldnn = x.dtype == torch.float32 and (groups > 1 or min(kernel) > 3 or n > 1 or n * c * h * w > 20480) and (
        any(st > 1 for st in stride) or any(dl > 1 for dl in dilation) or n >= 16 or not all(k == 1 for k in kernel)
        or torch.get_num_threads() > 1)
    if mkldnn:  # oneDNN reorders the weight and the input into its blocked layout for the call
        return weight.numel() * weight.element_size() + x.numel() * x.element_size()
    return 0 if one_by_one else cols


def _per_dim(v: Any, nd: int) -> list[int]:
    return [int(v)] * nd if isinstance(v, int) else [int(x) for x in v]


def _prod(xs: Any) -> int:
    out = 1
    for x in xs:
        out *= int(x)
    return out


class MemoryTracker(TorchDispatchMode):
    """Dispatch mode summing the bytes of live storages created inside it (see the module docstring)."""

    def __init__(self, names: dict[int, str] | None = None, policy: str = "fused") -> None:
        super().__init__()
        self.policy = policy  # "fused" (GPU), "math" (no fused kernel, MPS), "cpu" (torch's CPU choices)
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.result = Tracked()
        self._names = names or {}
        self._stack: list[str] = []
        self._hooks: list[Any] = []

    # -- module attribution -------------------------------------------------------------------
    def _pre(self, mod: torch.nn.Module, _args: Any) -> None:
        self._stack.append(self._names.get(id(mod), type(mod).__name__))

    def _post(self, _mod: torch.nn.Module, _args: Any, _out: Any) -> None:
        if self._stack:
            self._stack.pop()

    def __enter__(self) -> MemoryTracker:
        if self._names:
            self._hooks = [nn_module.register_module_forward_pre_hook(self._pre),
                           nn_module.register_module_forward_hook(self._post)]
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
        super().__exit__(*exc)

    # -- accounting ---------------------------------------------------------------------------
    def _register(self, out: Any) -> None:
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = storage._cdata
            known = self.live.get(key)
            if known is None or known[0].expired():
                self.live[key] = (StorageWeakRef(storage), storage.nbytes())

    def live_bytes(self) -> int:
        total = 0
        dead = []
        for key, (ref, nbytes) in self.live.items():
            if ref.expired():
                dead.append(key)
            else:
                total += nbytes
        for key in dead:
            del self.live[key]
        return total

    def _note(self, slot: Peak, live: int, workspace: int, func: Any) -> Peak:
        if live + workspace > slot.bytes:
            where = self._stack[-1] if self._stack else ""
            return Peak(live + workspace, live, workspace, str(func.overloadpacket.__name__), where)
        return slot

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        self._register(out)
        chosen = math = 0
        if func in SDPA_OPS:
            q, k, v = args[0], args[1], args[2]
            fused, math, flops = sdpa_costs(q, k, v)
            use_fused = self.policy == "fused" or (self.policy == "cpu" and cpu_fused(q, k, v))
            chosen = fused if use_fused else math
            self.result.attention_flops += flops
            scores = q.numel() // q.shape[-1] * k.shape[-2] * q.element_size()
            self.result.largest_scores = max(self.result.largest_scores, scores)
        elif self.policy == "cpu" and func in CONV_OPS:
            chosen = math = cpu_conv_workspace(func, args)
        live = self.live_bytes()
        r = self.result
        r.ops += 1
        r.peak = self._note(r.peak, live, chosen, func)
        r.peak_math = self._note(r.peak_math, live, math, func)
        return out


@contextmanager
def track(names: dict[int, str] | None = None, policy: str = "fused") -> Iterator[tuple[Tracked, Any]]:
    """Track live bytes and count FLOPs of the enclosed code; yields (result, flop counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    tracker = MemoryTracker(names, policy)
    with torch.inference_mode(), counter, tracker:
        yield tracker.result, counter


def total_flops(result: Tracked, counter: Any) -> int:
    """FLOPs counted by torch's counter (which sees SDPA's decomposition on meta tensors too;
    `result.attention_flops` is the attention share of it)."""
    return int(counter.get_total_flops())
