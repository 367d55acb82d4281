"""Per-row random streams, so that sampling in a batch reproduces sampling one prompt at a time.

Row ``r`` of a batch draws from its own generator seeded with ``seed + r``: a batch row gives exactly the
tokens that a single-prompt call with seed ``seed + r`` gives. Rows draw only in the steps they take part
in, with shapes that do not depend on the rest of the batch.
"""

from __future__ import annotations

import torch
from torch import Tensor


class RowRNG:
    """One seeded ``torch.Generator`` per batch row."""

    def __init__(self, seed: int, batch: int, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.generators = [torch.Generator(device=self.device).manual_seed(seed + r) for r in range(batch)]

    def rand(self, rows: Tensor, shape: tuple[int, ...], dtype: torch.dtype = torch.float64) -> Tensor:
        """Uniform [0, 1) draws of ``shape`` for each of ``rows``: [len(rows), *shape]."""
        if len(rows) == 0:
            return torch.empty((0, *shape), dtype=dtype, device=self.device)
        return torch.stack(
            [torch.rand(shape, dtype=dtype, generator=self.generators[r], device=self.device) for r in rows.tolist()]
        )
