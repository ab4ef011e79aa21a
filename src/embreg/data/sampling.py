"""Seeded index streams: which samples each step of a training loop draws."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class IndexStream:
    """Seeded permutations of range(n), consumed batch by batch across epochs.

    A new permutation is drawn (from ``gen``) when the current one cannot fill the next batch:
    every batch is full and the tail of a permutation is dropped. With ``partial`` the tail is
    served as a last, smaller batch, and the next permutation starts after it (one pass per
    epoch, as a DataLoader without drop_last)."""

    n: int
    perm: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    pos: int = 0
    partial: bool = False

    def next(self, batch: int, gen: torch.Generator) -> torch.Tensor:
        """The next batch's indices, (<= batch,) int64."""
        exhausted = self.pos >= len(self.perm) if self.partial else self.pos + batch > len(self.perm)
        if exhausted:
            self.perm, self.pos = torch.randperm(self.n, generator=gen), 0
        idx = self.perm[self.pos : self.pos + batch]
        self.pos += batch
        return idx
