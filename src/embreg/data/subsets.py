"""Seeded, class-balanced label subsets for semi-supervised evaluation, stored as index files;
the class-disjoint split of the metric-learning arms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def subset_name(fraction: float) -> str:
    """0.01 -> 'train_1pct'; 0.1 -> 'train_10pct'; 0.005 -> 'train_0.5pct'."""
    pct = fraction * 100
    return f"train_{pct:g}pct"


def balanced_subset(labels: torch.Tensor, fraction: float, seed: int) -> np.ndarray:
    """Indices of ``round(fraction * n_c)`` (at least one) samples of each class c, drawn
    with a seeded generator; sorted. (n,) -> (m,)"""
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    y = labels.numpy()
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        n = max(1, int(round(fraction * len(idx))))
        picked.append(rng.permutation(idx)[:n])
    return np.sort(np.concatenate(picked))


def write_index_file(path: Path, indices: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{int(i)}\n" for i in indices))


def read_index_file(path: Path) -> torch.Tensor:
    if not path.is_file():
        raise FileNotFoundError(f"label subset {path} is missing; run `dvc repro prepare`")
    return torch.tensor([int(line) for line in path.read_text().split()], dtype=torch.long)


CLASS_SPLIT_RULE = "first half of the label indices for training, the rest held out"


def class_split(num_classes: int) -> tuple[list[int], list[int]]:
    """The metric-learning protocol of CUB-200 and CARS196: train on the first half of the classes
    (by label index), retrieve on the other half, never seen in training. Deterministic.
    10 -> ([0..4], [5..9]); an odd count gives the extra class to training."""
    if num_classes < 2:
        raise ValueError(f"a class-disjoint split needs at least 2 classes, got {num_classes}")
    cut = (num_classes + 1) // 2
    return list(range(cut)), list(range(cut, num_classes))


def class_indices(labels: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """Indices (sorted) of the samples whose label is in ``classes``. (n,) -> (m,)"""
    return torch.isin(labels, torch.tensor(classes, dtype=labels.dtype)).nonzero().flatten()
