"""CIFAR-10 kept in memory as uint8 tensors, with pad-4 random crop + horizontal flip done on whole batches.

No DataLoader: one gather per batch builds the augmented crops, so the data side costs almost nothing next to
the binary network. All randomness comes from an explicit `torch.Generator` seeded from (seed, epoch), so the
batch order and the augmentation of every epoch are reproducible, identical across DDP ranks (each rank takes
its own stride of the same global permutation) and restart exactly after `--resume`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from bonn_serve.datasets import load_cifar10


@dataclass
class Split:
    x: torch.Tensor  # uint8 (N, 3, 32, 32)
    y: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device: torch.device) -> "Split":
        return Split(self.x.to(device), self.y.to(device))


def load_split(data_dir: str, split: str, layout: str = "auto", limit: int | None = None) -> Split:
    """Load a split as uint8 NCHW. ``limit`` keeps the first N of a fixed shuffle (smoke runs)."""
    x, y = load_cifar10(data_dir, split, layout)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    yt = torch.from_numpy(y)
    if limit is not None and limit < len(yt):
        # The npz files are class-major; a fixed permutation avoids a one-class prefix.
        idx = torch.randperm(len(yt), generator=torch.Generator().manual_seed(1234))[:limit]
        xt, yt = xt[idx].contiguous(), yt[idx].contiguous()
    return Split(xt, yt)


VALIDATION_SEED = 2019  # one fixed held-out set for every run, whatever the run's seed


def hold_out(split: Split, size: int, num_classes: int = 10) -> tuple[Split, Split]:
    """Split `size` images off a training set as a validation set: (rest, validation).

    Class-balanced (size // num_classes per class, the remainder to the lowest classes) and drawn from a fixed
    permutation, so every run of a sweep, whatever its seed, is tuned on the same images and trains on the
    same rest. Hyperparameters are chosen on the validation set; the test set only reports."""
    if size <= 0:
        return split, Split(split.x[:0], split.y[:0])
    counts = torch.bincount(split.y, minlength=num_classes)
    quota = torch.full((num_classes,), size // num_classes, dtype=torch.long)
    quota[: size % num_classes] += 1
    if bool((quota > counts).any()) or size >= len(split):
        raise ValueError(f"val_size {size} is too large for {len(split)} training images "
                         f"(per-class counts {counts.tolist()})")
    perm = torch.randperm(len(split), generator=torch.Generator().manual_seed(VALIDATION_SEED))
    y_perm = split.y[perm]
    # rank of each image among the images of its class, in permutation order
    onehot = torch.nn.functional.one_hot(y_perm, num_classes)
    rank = (onehot.cumsum(0) * onehot).sum(1) - 1
    is_val = torch.zeros(len(split), dtype=torch.bool)
    is_val[perm] = rank < quota[y_perm]
    val_idx, rest_idx = is_val.nonzero().squeeze(1), (~is_val).nonzero().squeeze(1)
    return (Split(split.x[rest_idx].contiguous(), split.y[rest_idx].contiguous()),
            Split(split.x[val_idx].contiguous(), split.y[val_idx].contiguous()))


class Normalizer:
    """uint8 NCHW -> float32 (x * f32(1/255) - mean) / std, optionally channels_last.

    In exactly the order and precision docs/format.md prescribes and `bonn-serve eval` and the service use, so
    the accuracy PyTorch logs is measured on the very inputs the engine gets. (A fused x * (1/(255 std)) -
    mean/std differs in the last bit for 81 % of the 768 pixel values, enough to flip near-zero signs.)"""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], channels_last: bool = False):
        self.scale = torch.tensor(1.0 / 255.0, dtype=torch.float32)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.channels_last = channels_last

    def to(self, device: torch.device) -> "Normalizer":
        self.scale, self.mean, self.std = self.scale.to(device), self.mean.to(device), self.std.to(device)
        return self

    def __call__(self, xb: torch.Tensor) -> torch.Tensor:
        out = (xb.float() * self.scale - self.mean) / self.std
        return out.contiguous(memory_format=torch.channels_last) if self.channels_last else out


def augment(xb: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop of the zero-padded image (pad 4) and random horizontal flip, as one gather.

    The random draws come from the CPU generator whatever the device of `xb`, so a GPU run sees the same
    crops and flips as a CPU run."""
    n, c, h, w = xb.shape
    dev = xb.device
    padded = torch.nn.functional.pad(xb, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(dev)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(dev)
    flip = (torch.rand(n, generator=gen) < 0.5).to(dev)
    ar_h, ar_w = torch.arange(h, device=dev), torch.arange(w, device=dev)
    rows = oy[:, None] + ar_h[None, :]                                          # (n, h)
    cols = ox[:, None] + torch.where(flip[:, None], w - 1 - ar_w[None, :], ar_w[None, :])  # (n, w)
    n_idx = torch.arange(n, device=dev)[:, None, None, None]
    c_idx = torch.arange(c, device=dev)[None, :, None, None]
    return padded[n_idx, c_idx, rows[:, None, :, None], cols[:, None, None, :]]


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def train_batches(split: Split, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1,
                  start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield this rank's share of each global batch of one epoch (incomplete last batch dropped).

    ``batch_size`` is the global batch; rank r gets the r-th stride of it (batch_size/world images), like a
    DistributedSampler over the same permutation. ``start_step`` skips batches (mid-epoch resume)."""
    if batch_size % world:
        raise ValueError(f"global batch {batch_size} is not divisible by world size {world}")
    gen = epoch_generator(seed, epoch)
    perm = torch.randperm(len(split), generator=gen)
    steps = len(split) // batch_size
    # Per-rank augmentation stream, forked deterministically from the epoch generator.
    aug_gen = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)) + rank)
    for step in range(steps):
        idx = perm[step * batch_size:(step + 1) * batch_size][rank::world].to(split.x.device)
        xb = split.x[idx]
        xb = augment(xb, aug_gen)
        if step >= start_step:
            yield xb, split.y[idx]


def steps_per_epoch(n: int, batch_size: int) -> int:
    return n // batch_size


def eval_batches(split: Split, batch_size: int = 500) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for i in range(0, len(split), batch_size):
        yield split.x[i:i + batch_size], split.y[i:i + batch_size]
