"""The training processes: one, or several under torchrun (DDP), and what they share."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..data.datasets import ImageDataset


@dataclass
class Processes:
    """This process's place among the training processes."""

    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_processes(device: str | None) -> Processes:
    """This process's rank and device; joins the process group when torchrun started several."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if world == 1:
        return Processes(0, 1, dev)
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Processes(dist.get_rank(), dist.get_world_size(), dev)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 in hardware (AVX512-BF16/AMX CPUs, recent GPUs).

    There bf16 autocast trains about twice as fast as fp32 (benchmarks/RESULTS.md); elsewhere
    it is emulated and slower, so it stays off.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        native = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
        return bool(native and native())
    return False


def sum_over_processes(t: torch.Tensor, procs: Processes) -> torch.Tensor:
    """``t`` summed over every process, in place."""
    if procs.world > 1:
        dist.all_reduce(t)
    return t


def val_shard(val: ImageDataset, procs: Processes) -> ImageDataset:
    """This process's share of the validation images: every ``world``-th from its rank."""
    rank, world = procs.rank, procs.world
    files, labels = val.files[rank::world], val.labels[rank::world]
    return ImageDataset(files, labels, val.transform, draft_size=val.draft_size)
