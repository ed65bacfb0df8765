"""Data-parallel ranks under torchrun: process group, this rank's device, and a few shared counters.

`torchrun --nproc-per-node N gm ...` starts N processes with RANK / WORLD_SIZE / LOCAL_RANK set.
Each joins the process group (NCCL on CUDA, gloo on the CPU) and takes the device of its
LOCAL_RANK. The ranks coordinate only through the rendezvous key-value store that torch.distributed
already runs (no sockets or pools of our own): rank 0 says when the output folder is ready, every
rank adds its finished jobs to one counter (rank 0's progress bar reads it without waiting for
anyone), and each rank says when it is through. Stores and counters are non-blocking, so ranks with
jobs of different lengths never wait for each other until the end.

(gm/train/run.py has its own `init_distributed` for DDP; this one also keeps the store.)
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from gm.errors import UsageError


@dataclass
class Ranks:
    """This process's place among the ranks; a single process is rank 0 of 1 with no store."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str | None = None  # under torchrun: this rank's device ("cuda:3", "cpu"); else None = as asked
    store: Any = None  # a PrefixStore on the rendezvous store (world > 1)
    owns_group: bool = False  # this module started the process group (and ends it in close())
    _counts: dict[str, int] = field(default_factory=dict)  # the counters of a single process

    @property
    def main(self) -> bool:
        return self.rank == 0

    def add(self, key: str, n: int = 1) -> int:
        """Add to a counter shared by all ranks; returns its new value (n = 0 reads it)."""
        if self.store is None:
            self._counts[key] = self._counts.get(key, 0) + n
            return self._counts[key]
        return int(self.store.add(key, n))

    def set(self, key: str, value: str) -> None:
        if self.store is not None:
            self.store.set(key, value)

    def get(self, key: str) -> str:
        """A value set by some rank (waits for it)."""
        return self.store.get(key).decode()

    def wait_count(self, key: str, count: int, poll_s: float = 0.1) -> None:
        """Block until the shared counter `key` reaches `count` (no time limit: ranks finish when they finish)."""
        while self.add(key, 0) < count:
            time.sleep(poll_s)

    def share(self, text: str | None, key: str) -> str:
        """Rank 0's `text` on every rank (e.g. a job file read from stdin, which only rank 0 reads)."""
        if self.store is None:
            assert text is not None
            return text
        if self.main:
            assert text is not None
            self.set(key, text)
            return text
        return self.get(key)

    def close(self) -> None:
        if self.owns_group:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self.owns_group = False


def world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise UsageError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number",
                         "start several ranks with torchrun") from None


def init_ranks(device: str = "auto") -> Ranks:
    """Join torchrun's process group when WORLD_SIZE > 1; a plain Ranks() otherwise."""
    world = world_size()
    if world <= 1:
        return Ranks()
    import torch
    import torch.distributed as dist

    from gm.device import pick_device

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    target = pick_device(device)
    if target.type == "cuda" and target.index is not None:  # it would be ignored: say so instead
        raise UsageError(f"--device {device} under torchrun: each rank takes the GPU of its LOCAL_RANK",
                         "use --device cuda (or auto); CUDA_VISIBLE_DEVICES picks which GPUs")
    if target.type == "cuda":
        if local >= torch.cuda.device_count():
            raise UsageError(f"rank {rank} has LOCAL_RANK {local} but this machine has {torch.cuda.device_count()} "
                             "CUDA GPUs", "start at most one process per GPU (--nproc-per-node)")
        target = torch.device("cuda", local)
        torch.cuda.set_device(target)
    owns = False
    if dist.is_initialized():
        store = dist.distributed_c10d._get_default_store()
    else:
        store, rank, world = next(dist.rendezvous("env://"))
        dist.init_process_group("nccl" if target.type == "cuda" else "gloo", store=store, rank=rank, world_size=world)
        owns = True
    # Keys are per launch: a worker group restarted by torchrun (--max-restarts) starts from zero.
    prefix = f"gm-batch/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"
    return Ranks(rank, world, local, str(target), dist.PrefixStore(prefix, store), owns)
