"""Per-row random streams, so that sampling in a batch reproduces sampling one prompt at a time.

Row ``r`` of a batch draws from its own generator seeded with ``seed + r``: a batch row gives exactly the
tokens that a single-prompt call with seed ``seed + r`` gives. Rows draw only in the steps they take part
in, with shapes that do not depend on the rest of the batch. A caller that batches unrelated requests (the
server) gives each row its own seed instead.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


class RowRNG:
    """One seeded ``torch.Generator`` per batch row: ``seed + r``, or ``seed[r]`` when one seed per row is given."""

    def __init__(self, seed: int | Sequence[int], batch: int, device: torch.device | str) -> None:
        self.device = torch.device(device)
        seeds = [seed + r for r in range(batch)] if isinstance(seed, int) else [int(s) for s in seed]
        if len(seeds) != batch:
            raise ValueError(f"{len(seeds)} row seeds given for a batch of {batch} rows")
        self.generators = [torch.Generator(device=self.device).manual_seed(s) for s in seeds]

    def rand(self, rows: Tensor, shape: tuple[int, ...], dtype: torch.dtype = torch.float64) -> Tensor:
        """Uniform [0, 1) draws of ``shape`` for each of ``rows``: [len(rows), *shape]."""
        if len(rows) == 0:
            return torch.empty((0, *shape), dtype=dtype, device=self.device)
        return torch.stack(
            [torch.rand(shape, dtype=dtype, generator=self.generators[r], device=self.device) for r in rows.tolist()]
        )

    def randint(self, rows: Tensor, high: int, shape: tuple[int, ...]) -> Tensor:
        """Uniform integers in ``[0, high)`` of ``shape`` for each of ``rows`` (``torch.randint`` on the row's stream,
        so one row draws what ``torch.manual_seed(seed); torch.randint(0, high, shape)`` draws): [len(rows), *shape]."""
        return torch.stack([torch.randint(0, high, shape, generator=self.generators[r], device=self.device)
                            for r in rows.tolist()]) if len(rows) else torch.empty((0, *shape), dtype=torch.long,
                                                                                   device=self.device)

    def multinomial(self, rows: Tensor, probs: Tensor, where: Tensor | None = None) -> Tensor:
        """One draw per position from ``probs`` [b, W, V] (``torch.multinomial(probs[i], 1)`` on row ``rows[i]``'s
        stream, the call transformers' DiffusionGemma sampling makes on a batch of one): [b, W] long.

        ``where`` [b, W] bool: draw only at those positions (in column order; 0 elsewhere), so that what a row
        draws depends on its own positions only, not on a window widened by other rows of the batch."""
        out = probs.new_zeros(probs.shape[:2], dtype=torch.long)
        for i, r in enumerate(rows.tolist()):
            if where is None:
                out[i] = torch.multinomial(probs[i], 1, generator=self.generators[r]).squeeze(-1)
                continue
            cols = where[i].nonzero()[:, 0]
            if len(cols):
                out[i, cols] = torch.multinomial(probs[i, cols], 1, generator=self.generators[r]).squeeze(-1)
        return out

    def take(self, rows: Tensor) -> "RowRNG":
        """The streams of ``rows`` (in that order), continuing where they are: a row that leaves keeps its stream."""
        out = RowRNG.__new__(RowRNG)
        out.device, out.generators = self.device, [self.generators[r] for r in rows.tolist()]
        return out

    def cat(self, other: "RowRNG") -> "RowRNG":
        """This batch's streams followed by ``other``'s (rows joining a running generation)."""
        out = RowRNG.__new__(RowRNG)
        out.device, out.generators = self.device, self.generators + other.generators
        return out
