"""A preallocated per-layer key/value buffer, written in place through canvas columns.

Slot ``c`` of the buffer holds the post-RoPE key and the value of canvas column ``c``, as last computed.
Shapes never change during a generation (as in gpt-fast): a forward writes the K/V of the columns it
computes and then attends to the slots ``[0, key_end)``. Which columns are computed, and so which slots are
fresh and which are reused, is decided by the cache manager's :class:`~dlm.cache.base.ForwardPlan`.
"""

from __future__ import annotations

import torch
from torch import Tensor


class KVBuffer:
    """Keys and values of every layer: ``[n_layers, B, n_kv_heads, L, head_dim]``."""

    def __init__(
        self,
        n_layers: int,
        batch: int,
        n_kv_heads: int,
        length: int,
        head_dim: int,
        *,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> None:
        shape = (n_layers, batch, n_kv_heads, length, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)

    @property
    def length(self) -> int:
        return self.keys.shape[3]

    def write(self, layer: int, rows: Tensor | None, start: int, k: Tensor, v: Tensor,
              keep: Tensor | None = None) -> None:
        """Store ``k``/``v`` ([b, H, q, D]) into slots ``[start, start+q)`` of ``rows`` (None: all rows); with
        ``keep`` ([b, q] bool) only where it is True, the other slots keeping what they hold."""
        end = start + k.shape[2]
        if keep is not None:
            r = slice(None) if rows is None else rows
            k, v = _merge(keep, k, v, self.keys[layer, r, :, start:end], self.values[layer, r, :, start:end])
        if rows is None:
            self.keys[layer, :, :, start:end] = k
            self.values[layer, :, :, start:end] = v
        else:
            self.keys[layer, rows, :, start:end] = k
            self.values[layer, rows, :, start:end] = v

    def write_columns(self, layer: int, rows: Tensor | None, columns: Tensor, k: Tensor, v: Tensor,
                      keep: Tensor | None = None) -> None:
        """Store ``k``/``v`` ([b, H, q, D]) into the slots ``columns`` ([b, q], per row) of ``rows``; with
        ``keep`` ([b, q] bool) only where it is True."""
        r = torch.arange(k.shape[0], device=columns.device)[:, None] if rows is None else rows[:, None]  # [b, 1]
        if keep is not None:
            old_k = self.keys[layer][r, :, columns].transpose(1, 2)  # [b, H, q, D]
            k, v = _merge(keep, k, v, old_k, self.values[layer][r, :, columns].transpose(1, 2))
        # advanced indices at dims 0 and 2 (split by the head slice) put [b, q] first: [b, q, H, D]
        self.keys[layer][r, :, columns] = k.transpose(1, 2)
        self.values[layer][r, :, columns] = v.transpose(1, 2)

    def read(self, layer: int, rows: Tensor | None, key_end: int) -> tuple[Tensor, Tensor]:
        """Keys and values of slots ``[0, key_end)`` for ``rows``: two [b, H, key_end, D] tensors."""
        if rows is None:
            return self.keys[layer, :, :, :key_end], self.values[layer, :, :, :key_end]
        return self.keys[layer, rows, :, :key_end], self.values[layer, rows, :, :key_end]

    @classmethod
    def _wrap(cls, keys: Tensor, values: Tensor) -> "KVBuffer":
        out = cls.__new__(cls)
        out.keys, out.values = keys, values
        return out

    def take(self, rows: Tensor) -> "KVBuffer":
        """A new buffer holding a copy of ``rows`` (in that order)."""
        rows = rows.to(self.keys.device)
        return self._wrap(self.keys.index_select(1, rows), self.values.index_select(1, rows))

    def cat(self, other: "KVBuffer") -> "KVBuffer":
        """A new buffer with this buffer's rows followed by ``other``'s (rows joining a generation)."""
        return self._wrap(torch.cat((self.keys, other.keys), dim=1), torch.cat((self.values, other.values), dim=1))

    def shift_columns(self, n: int) -> "KVBuffer":
        """A new buffer for a canvas with ``n`` columns added on the left (``n < 0``: the first ``-n`` removed);
        every slot keeps its column's K/V."""
        if n >= 0:
            pad = lambda t: torch.nn.functional.pad(t, (0, 0, n, 0))  # noqa: E731
            return self._wrap(pad(self.keys), pad(self.values))
        return self._wrap(self.keys[:, :, :, -n:].clone(), self.values[:, :, :, -n:].clone())

    def copy_rows(self, dst: Tensor, src: "KVBuffer", src_rows: Tensor) -> None:
        """Rows ``dst`` of this buffer become rows ``src_rows`` of ``src`` (a candidate kept)."""
        self.keys[:, dst] = src.keys[:, src_rows]
        self.values[:, dst] = src.values[:, src_rows]


def _merge(keep: Tensor, k: Tensor, v: Tensor, old_k: Tensor, old_v: Tensor) -> tuple[Tensor, Tensor]:
    """``k``/``v`` where ``keep`` ([b, q]) is True, the slots' old K/V elsewhere ([b, H, q, D] each)."""
    mask = keep[:, None, :, None]
    return torch.where(mask, k, old_k), torch.where(mask, v, old_v)


class FeatureBuffer:
    """Attention and MLP outputs of every layer per canvas column (a feature cache,
    :class:`~dlm.messages.FeatureStore`): ``[n_layers, B, L, dim]`` each, written and read through per-row columns,
    like :class:`KVBuffer`'s slots."""

    def __init__(self, n_layers: int, batch: int, length: int, dim: int, *, dtype: torch.dtype,
                 device: torch.device | str) -> None:
        self.attn = torch.zeros(n_layers, batch, length, dim, dtype=dtype, device=device)
        self.mlp = torch.zeros_like(self.attn)

    @property
    def length(self) -> int:
        return self.attn.shape[2]

    def read(self, layer: int, rows: Tensor | None, columns: Tensor) -> tuple[Tensor, Tensor]:
        """The outputs of ``columns`` ([b|1, q]) of ``rows`` (None: all): two [b, q, dim] tensors."""
        r = _row_index(rows, columns, self.attn.shape[1])
        return self.attn[layer][r, columns], self.mlp[layer][r, columns]

    def write(self, layer: int, rows: Tensor | None, columns: Tensor, attn: Tensor, mlp: Tensor,
              keep: Tensor | None = None) -> None:
        """Store ``attn``/``mlp`` ([b, q, dim]) at ``columns`` ([b, q]) of ``rows``; with ``keep`` ([b, q] bool)
        only where it is True."""
        r = _row_index(rows, columns, attn.shape[0])
        if keep is not None:
            old_a, old_m = self.attn[layer][r, columns], self.mlp[layer][r, columns]
            attn, mlp = torch.where(keep[..., None], attn, old_a), torch.where(keep[..., None], mlp, old_m)
        self.attn[layer][r, columns] = attn
        self.mlp[layer][r, columns] = mlp

    @classmethod
    def _wrap(cls, attn: Tensor, mlp: Tensor) -> "FeatureBuffer":
        out = cls.__new__(cls)
        out.attn, out.mlp = attn, mlp
        return out

    def take(self, rows: Tensor) -> "FeatureBuffer":
        rows = rows.to(self.attn.device)
        return self._wrap(self.attn.index_select(1, rows), self.mlp.index_select(1, rows))

    def cat(self, other: "FeatureBuffer") -> "FeatureBuffer":
        return self._wrap(torch.cat((self.attn, other.attn), dim=1), torch.cat((self.mlp, other.mlp), dim=1))

    def copy_rows(self, dst: Tensor, src: "FeatureBuffer", src_rows: Tensor) -> None:
        """Rows ``dst`` of this buffer become rows ``src_rows`` of ``src`` (a candidate kept)."""
        self.attn[:, dst] = src.attn[:, src_rows]
        self.mlp[:, dst] = src.mlp[:, src_rows]

    def shift_columns(self, n: int) -> "FeatureBuffer":
        """A new buffer for a canvas with ``n`` columns added on the left (``n < 0``: removed)."""
        if n >= 0:
            pad = lambda t: torch.nn.functional.pad(t, (0, 0, n, 0))  # noqa: E731
            return self._wrap(pad(self.attn), pad(self.mlp))
        return self._wrap(self.attn[:, :, -n:].clone(), self.mlp[:, :, -n:].clone())


def _row_index(rows: Tensor | None, columns: Tensor, b: int) -> Tensor:
    """[b, 1] row index for advanced indexing beside per-row ``columns``."""
    if rows is None:
        return torch.arange(max(b, columns.shape[0]), device=columns.device)[:, None]
    return rows[:, None]


class WriteWindow:
    """A view of a KV store that stores only columns ``[lo, hi)`` of each write (reads pass through).

    ``lo``/``hi`` are ints (the same for every row) or [b] tensors (a bound per row of the write, rows as in
    the forward): rows of one forward at different places of their schedules store different columns.
    """

    def __init__(self, kv: KVBuffer, lo: int | Tensor, hi: int | Tensor) -> None:
        self.kv, self.lo, self.hi = kv, lo, hi
        self.keys, self.values = kv.keys, kv.values

    @property
    def length(self) -> int:
        return self.kv.length

    def write(self, layer: int, rows: Tensor | None, start: int, k: Tensor, v: Tensor) -> None:
        end = start + k.shape[2]
        if isinstance(self.lo, int) and isinstance(self.hi, int):
            a, b = max(self.lo, start), min(self.hi, end)
            if a < b:
                self.kv.write(layer, rows, a, k[:, :, a - start : b - start], v[:, :, a - start : b - start])
            return
        cols = torch.arange(start, end, device=k.device)[None, :]
        lo = torch.as_tensor(self.lo, device=k.device).reshape(-1, 1)
        hi = torch.as_tensor(self.hi, device=k.device).reshape(-1, 1)
        self.kv.write(layer, rows, start, k, v, keep=(cols >= lo) & (cols < hi))

    def write_columns(self, layer: int, rows: Tensor | None, columns: Tensor, k: Tensor, v: Tensor,
                      keep: Tensor | None = None) -> None:
        lo = torch.as_tensor(self.lo, device=k.device).reshape(-1, 1)
        hi = torch.as_tensor(self.hi, device=k.device).reshape(-1, 1)
        inside = (columns >= lo) & (columns < hi)
        self.kv.write_columns(layer, rows, columns, k, v, keep=inside if keep is None else inside & keep)

    def read(self, layer: int, rows: Tensor | None, key_end: int) -> tuple[Tensor, Tensor]:
        return self.kv.read(layer, rows, key_end)
