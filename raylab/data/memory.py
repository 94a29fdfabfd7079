"""Many decoded images in one tensor, written in place: no list of images beside the stacked copy.

A single-machine UAP holds its source images in memory (``raylab uap``, ``raylab audit``), and every command its
medical images (a CSV folder of ISIC photos, say). ``torch.stack`` of a list holds every image twice at its peak:
100,000 RGB images at 299 px are 27 GB as uint8, and were 54 GB while stacked. :class:`ImageStack` allocates the
tensor for the images asked for once and writes each into its place."""

from __future__ import annotations

import torch

from ..errors import InputError


class ImageStack:
    """Images of one shape, stacked as they arrive into room for the ``capacity`` announced; :meth:`tensor` is the
    N x C x H x W of those added (a view of the first N places: images skipped on the way leave their places unused,
    not copied away)."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.count = capacity, 0
        self._out: torch.Tensor | None = None
        self._first = ""  #: the first image's name, which set the shape

    @property
    def shape(self) -> tuple[int, ...] | None:
        """The images' shape (that of the first one), None before it."""
        return None if self._out is None else tuple(self._out.shape[1:])

    def add(self, image: torch.Tensor, name: str = "") -> None:
        """Write ``image`` into the next place; one of another shape than the first is refused in one line naming
        both (images are stacked as decoded, so without a resize all must share one size)."""
        if self._out is None:
            self._out, self._first = _allocate(self.capacity, tuple(image.shape), image.dtype), name
        elif tuple(image.shape) != self.shape:
            raise InputError(f"{name or 'image ' + str(self.count)}: size {tuple(image.shape[1:])} differs from "
                             f"{self.shape[1:]} of {self._first or 'the first image'}; give a size to resize")
        if self.count == self.capacity:  # more images than announced (never from a valid manifest): grow, copying
            self.capacity = max(1, 2 * self.capacity)
            grown = _allocate(self.capacity, tuple(self._out.shape[1:]), self._out.dtype)
            grown[:self.count] = self._out
            self._out = grown
        self._out[self.count] = image
        self.count += 1

    def widen(self) -> None:
        """Gray images added so far made RGB (the gray repeated in each channel), so that RGB images fit beside them:
        a set decoded as stored, gray until its first colour image."""
        assert self._out is not None and self._out.shape[1] == 1, "widen() turns a stack of gray images to RGB"
        wide = _allocate(self.capacity, (3, *self._out.shape[2:]), self._out.dtype)
        wide[:self.count] = self._out[:self.count]  # broadcast: one channel into three
        self._out = wide

    def tensor(self) -> torch.Tensor:
        assert self._out is not None, "no image was added"
        return self._out[:self.count]


def _allocate(count: int, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Room for ``count`` images, or one line saying they do not fit in memory (at the first image, where a list
    of images grew until memory ran out)."""
    try:
        return torch.empty((count, *shape), dtype=dtype)
    except RuntimeError as e:
        if "allocate" not in str(e):
            raise
        size = count * torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
        raise InputError(f"{count} images of {'x'.join(map(str, shape))} pixels are {size / 1e9:.3g} GB in memory, more "
                         "than this machine can allocate; use a sample of them, or stream them through the engine "
                         "(raylab generate)") from None
