"""Batches of a UAP loop on the model's device, batch k+1's copy overlapping batch k's compute on a GPU.

The loops of Section 2.2 (and the stochastic-gradient method's) visit the input images in a seeded order, one batch
at a time. On a GPU, ``images[idx].to("cuda")`` stalls every batch: indexing makes a new tensor in pageable host
memory, and a copy from pageable memory is synchronous whatever ``non_blocking`` says: it runs after the kernels
queued before it and holds the host until it is done, so the GPU idles while the host copies and then launches
the next batch's kernels. :func:`device_batches` gathers batch k+1 into one of two pinned host buffers and copies it
on a side stream while the model still works on batch k; the compute stream waits on an event for that copy alone.
The images (uint8 raw or float) travel as they are: converting on the device keeps uint8's 4x fewer bytes.

Elsewhere (a CPU model, or images already on the GPU) the batches are plain ``images[idx]``: the same values in
the same order, and the loops' results do not depend on which path ran.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor


def gather(images: Tensor, idx: Tensor, out: Tensor) -> Tensor:
    """``images[idx]`` written into the first ``len(idx)`` rows of ``out`` (a reused buffer: pinned memory on the
    GPU path) and returned as that view."""
    view = out[: len(idx)]
    torch.index_select(images, 0, idx, out=view)
    return view


def copy_on(stream: torch.cuda.Stream, host: Tensor, device: torch.device) -> tuple[Tensor, torch.cuda.Event]:
    """``host`` copied to ``device`` on ``stream`` (a side stream), and the event that marks the copy done."""
    with torch.cuda.stream(stream):
        x = host.to(device, non_blocking=True)
        done = torch.cuda.Event()
        done.record(stream)
    return x, done


def ready_here(x: Tensor, done: torch.cuda.Event, device: torch.device) -> Tensor:
    """``x``, copied by :func:`copy_on`, made safe to read on the current stream: it waits for that copy alone, and
    ``x``'s memory (allocated on the side stream) is not reused before the current stream is done with it."""
    current = torch.cuda.current_stream(device)
    current.wait_event(done)
    x.record_stream(current)
    return x


def device_batches(images: Tensor, order: Tensor, batch_size: int, *, device: torch.device,
                   overlap: bool = True) -> Iterator[tuple[Tensor, Tensor]]:
    """``(idx, images[idx] on device)`` for each batch of ``order`` split into ``batch_size``.

    With ``device`` a GPU, ``images`` on the host and ``overlap``, the next batch is copied on a side stream while the
    caller computes on this one (module docstring); a yielded tensor is ready for the current stream to read.
    """
    chunks = order.split(batch_size)
    if device.type != "cuda" or images.device.type == "cuda" or not overlap:
        for idx in chunks:
            yield idx, images[idx.to(images.device)].to(device, non_blocking=True)
        return
    yield from _overlapped(images, chunks, device)


def _overlapped(images: Tensor, chunks: tuple[Tensor, ...], device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
    side = torch.cuda.Stream(device)
    rows = max(len(c) for c in chunks)
    staging = [torch.empty((rows, *images.shape[1:]), dtype=images.dtype, pin_memory=True) for _ in range(2)]
    copied: list[torch.cuda.Event | None] = [None, None]  # the last copy out of each buffer

    def start(k: int) -> tuple[Tensor, torch.cuda.Event]:
        slot = k % 2
        if copied[slot] is not None:
            copied[slot].synchronize()  # the buffer's previous copy (batch k-2) has left it: safe to overwrite
        x, done = copy_on(side, gather(images, chunks[k], staging[slot]), device)
        copied[slot] = done
        return x, done

    ahead = start(0)
    for k, idx in enumerate(chunks):
        x = ready_here(*ahead, device)
        if k + 1 < len(chunks):
            ahead = start(k + 1)  # its copy runs while the caller computes on x
        yield idx, x
