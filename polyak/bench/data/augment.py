"""Batch-wise data augmentation on tensors, on whatever device the batch lives (no torchvision).

The papers' CIFAR/SVHN pipeline (phase-wise aggregation, Sec. 3; SWA/Gadam code; He et al.
2016): per-channel standardization, a random 32x32 crop of the image zero-padded by 4 pixels, and
a random horizontal flip (CIFAR only, not SVHN digits). :class:`Augment` crops and flips the
``[0, 1]`` images and then standardizes them, which is exactly torchvision's
``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip()``, ``ToTensor()``, ``Normalize(mean, std)``:
the padding is black in pixel space. Every random draw comes from ``generator`` (which must live
on the batch's device) so that a seeded run augments identically.
"""

from __future__ import annotations

import torch

__all__ = ["Augment", "channel_stats", "hflip", "random_crop", "standardize"]


def channel_stats(x: torch.Tensor, batch: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (population) standard deviation of ``x`` of shape (N, C, H, W),
    accumulated in float64 over chunks of ``batch`` images."""
    C = x.shape[1]
    total = torch.zeros(C, dtype=torch.float64, device=x.device)
    squares = torch.zeros(C, dtype=torch.float64, device=x.device)
    for start in range(0, len(x), batch):
        part = x[start:start + batch].to(torch.float64)
        total += part.sum(dim=(0, 2, 3))
        squares += part.square().sum(dim=(0, 2, 3))
    count = x.numel() // C
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    return mean.to(x.dtype), std.to(x.dtype)


def standardize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``(x - mean) / std`` per channel of (N, C, H, W)."""
    mean = mean.to(device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    std = std.to(device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - mean) / std


def _check_padding(padding: int) -> None:
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"Invalid padding: {padding!r} (allowed: an integer >= 0)")


def _window(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor,
            flip: torch.Tensor | None = None) -> torch.Tensor:
    """``out[n, c, i, j] = x[n, c, i + top[n], j + left[n]]`` (zero outside the image), mirrored
    left-right where ``flip[n]``: crop of the zero-padded image and flip in one gather, without
    materialising the padded batch."""
    N, C, H, W = x.shape
    rows = top[:, None] + torch.arange(H, device=x.device)  # (N, H)
    cols = left[:, None] + torch.arange(W, device=x.device)  # (N, W)
    if flip is not None:
        cols = torch.where(flip[:, None], cols.flip(1), cols)
    inside = ((rows >= 0) & (rows < H))[:, :, None] & ((cols >= 0) & (cols < W))[:, None, :]
    index = rows.clamp(0, H - 1)[:, :, None] * W + cols.clamp(0, W - 1)[:, None, :]
    out = x.reshape(N, C, H * W).gather(2, index.view(N, 1, H * W).expand(N, C, H * W))
    return out.view(N, C, H, W).masked_fill_(~inside[:, None], 0)


def _offsets(x: torch.Tensor, padding: int, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randint(0, 2 * padding + 1, (2, x.shape[0]), device=x.device,
                         generator=generator) - padding


def random_crop(x: torch.Tensor, padding: int = 4,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Each image zero-padded by ``padding`` pixels on every side, then cropped back to its size at
    an offset drawn uniformly from ``{0, ..., 2 padding}`` in each direction, independently per
    image. One gather for the whole batch."""
    _check_padding(padding)
    top, left = _offsets(x, padding, generator)
    return _window(x, top, left)


def hflip(x: torch.Tensor, p: float = 0.5,
          generator: torch.Generator | None = None) -> torch.Tensor:
    """Each image mirrored left-right with probability ``p``, independently."""
    if not 0 <= p <= 1:
        raise ValueError(f"Invalid p: {p!r} (allowed: 0 <= p <= 1)")
    flip = torch.rand(x.shape[0], device=x.device, generator=generator) < p
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)


class Augment:
    """The training transform of a task: crop (and flip) the [0, 1] batch, then standardize.

    ``mean``/``std`` come from :func:`channel_stats` of the training split. Call ``augment(x,
    generator)`` on training batches and ``augment.eval(x)`` (standardization only) on the rest.
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, *, padding: int = 4,
                 flip: bool = True) -> None:
        mean, std = torch.as_tensor(mean), torch.as_tensor(std)
        if mean.shape != std.shape or mean.dim() != 1:
            raise ValueError(f"Invalid mean/std: shapes {tuple(mean.shape)} and "
                             f"{tuple(std.shape)} (allowed: equal 1-D, one entry per channel)")
        if not bool((std > 0).all()):
            raise ValueError(f"Invalid std: {std.tolist()} (allowed: every entry > 0)")
        _check_padding(padding)
        self.mean, self.std, self.padding, self.flip = mean, std, padding, bool(flip)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Same draws and result as ``standardize(hflip(random_crop(x, padding, g), 0.5, g))``,
        fused: one gather, then standardization in place."""
        N = x.shape[0]
        top, left = _offsets(x, self.padding, generator)
        flip = (torch.rand(N, device=x.device, generator=generator) < 0.5) if self.flip else None
        out = _window(x, top, left, flip)
        mean = self.mean.to(device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        std = self.std.to(device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        return out.sub_(mean).div_(std)

    def eval(self, x: torch.Tensor) -> torch.Tensor:
        return standardize(x, self.mean, self.std)

    def state_dict(self) -> dict:
        return {"mean": self.mean.clone(), "std": self.std.clone(), "padding": self.padding,
                "flip": self.flip}

    def load_state_dict(self, state: dict) -> None:
        self.__init__(state["mean"], state["std"], padding=state["padding"], flip=state["flip"])
