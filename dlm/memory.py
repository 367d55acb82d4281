"""Run memory: what a component remembers about a generation, kept on the state, one entry per row.

A component's per-run memory (an iteration's progress, a cache's KV buffers and bookkeeping, a strategy's
history) is created by the component when rows start (``start(state)`` returns it) and kept on the
:class:`~dlm.state.GenerationState` (``state.progress``, ``state.memory["cache"]``,
``state.memory["decoding"]``); the component itself holds only its config. So one component object serves
any number of generations at once, from any number of threads, and rows can join or leave a running
generation: the state keeps the rows it is told to (:meth:`RowMemory.take`) and appends the rows of another
state started for newcomers (:meth:`RowMemory.cat`).

:class:`RowMemory` does both generically for a dataclass whose fields hold one entry per row:

- a tensor with rows on dim 0 (or on the dim named by ``row_field(dim=...)``);
- an object with ``take``/``cat`` of its own (a :class:`~dlm.models.kv.KVBuffer`, a nested RowMemory);
- a list with one entry per row;
- anything else (an int, a string, None) is per-generation and must be equal in both states on ``cat``
  (``shared_field()`` documents the intent).

Rows are *batch* rows: tensor fields have the batch's rows, not the window's.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any, ClassVar

import torch
from torch import Tensor

__all__ = ["RowMemory", "SoftStore", "row_field", "shared_field", "derived_field", "column_field", "column_index_field",
           "take_rows", "cat_rows", "shift_columns"]


def row_field(*, dim: int = 0, **kwargs: Any):
    """A dataclass field with rows on ``dim`` (default 0)."""
    return field(metadata={"row_dim": dim}, **kwargs)


def shared_field(**kwargs: Any):
    """A dataclass field that is the same for every row of a generation (equal in states that are joined)."""
    return field(metadata={"shared": True}, **kwargs)


def column_field(*, dim: int = 1, fill: Any = 0, row_dim: int = 0, **kwargs: Any):
    """A tensor field with canvas columns on ``dim`` (slot ``c`` is column ``c``): when the canvas grows or
    shrinks on the left (:meth:`~dlm.state.GenerationState.shift`), the field moves with it, new columns
    holding ``fill``."""
    return field(metadata={"row_dim": row_dim, "col_dim": dim, "fill": fill}, **kwargs)


def column_index_field(**kwargs: Any):
    """A tensor (or int) field whose *values* are canvas columns: they move by the shift of the canvas."""
    return field(metadata={"column_index": True}, **kwargs)


def shift_columns(value: Any, n: int, dim: int, fill: Any = 0) -> Any:
    """``value`` with ``n`` columns added before column 0 on ``dim`` (``n < 0``: the first ``-n`` dropped)."""
    if value is None:
        return None
    if isinstance(value, Tensor):
        if n >= 0:
            shape = list(value.shape)
            shape[dim] = n
            return torch.cat((torch.full(shape, fill, dtype=value.dtype, device=value.device), value), dim=dim)
        return value.narrow(dim, -n, value.shape[dim] + n).clone()
    if hasattr(value, "shift_columns"):
        return value.shift_columns(n)
    raise TypeError(f"cannot move the columns of {type(value).__name__}")


def derived_field(**kwargs: Any):
    """A dataclass field holding something derived from the rows (a per-step cache); reset to its default
    when rows leave or join, so it is recomputed."""
    return field(metadata={"derived": True}, **kwargs)


def take_rows(value: Any, rows: Tensor, dim: int = 0) -> Any:
    """``value`` restricted to ``rows`` (in that order) along its row axis."""
    if value is None:
        return None
    if isinstance(value, Tensor):
        return value.index_select(dim, rows.to(value.device))
    if hasattr(value, "take"):
        return value.take(rows)
    if isinstance(value, list):
        return [value[r] for r in rows.tolist()]
    return value


def cat_rows(a: Any, b: Any, dim: int = 0, name: str = "value") -> Any:
    """The rows of ``a`` followed by those of ``b``."""
    if a is None and b is None:
        return None
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        if a.shape[:dim] + a.shape[dim + 1:] != b.shape[:dim] + b.shape[dim + 1:]:
            raise ValueError(f"cannot join run memory {name!r}: shapes {tuple(a.shape)} and {tuple(b.shape)} differ "
                             f"beyond the row axis {dim}")
        return torch.cat((a, b.to(a.device)), dim=dim)
    if hasattr(a, "cat") and type(a) is type(b):
        return a.cat(b)
    if isinstance(a, list) and isinstance(b, list):
        return a + b
    if a != b:
        raise ValueError(f"cannot join run memory {name!r}: {a!r} and {b!r} differ (a per-generation value)")
    return a


@dataclass
class RowMemory:
    """Base of per-row run memory dataclasses: generic :meth:`take` and :meth:`cat` over the fields.

    ``movable``: the class declares every field that holds canvas columns (:func:`column_field`) or column
    numbers (:func:`column_index_field`), so :meth:`shift_columns` can follow the canvas growing or shrinking
    on the left. False by default: a generation holding such memory is never shifted (the engine then starts
    newcomers that need more room in a generation of their own, which is exact too).
    """

    movable: ClassVar[bool] = False

    def take(self, rows: Tensor):
        """This memory for ``rows`` only (a [b] long index into the batch rows, in the new order)."""
        return replace(self, **{
            f.name: _reset(f) if f.metadata.get("derived") else take_rows(getattr(self, f.name), rows,
                                                                           f.metadata.get("row_dim", 0))
            for f in fields(self) if not f.metadata.get("shared")
        })

    def cat(self, other):
        """This memory's rows followed by ``other``'s (a state started for rows that join this one)."""
        if type(other) is not type(self):
            raise ValueError(f"cannot join {type(self).__name__} with {type(other).__name__}")
        return replace(self, **{
            f.name: _reset(f) if f.metadata.get("derived") else cat_rows(getattr(self, f.name),
                                                                          getattr(other, f.name),
                                                                          f.metadata.get("row_dim", 0), f.name)
            for f in fields(self)
        })


    def shift_columns(self, n: int):
        """This memory for a canvas with ``n`` columns added on the left (``n < 0``: removed): fields declared
        with :func:`column_field` move, :func:`column_index_field` values add ``n``, objects with a
        ``shift_columns`` of their own (a KV buffer, a nested RowMemory) shift themselves."""
        changed = {}
        for f in fields(self):
            value, meta = getattr(self, f.name), f.metadata
            if meta.get("derived"):
                changed[f.name] = _reset(f)
            elif "col_dim" in meta:
                changed[f.name] = shift_columns(value, n, meta["col_dim"], meta.get("fill", 0))
            elif meta.get("column_index"):
                changed[f.name] = None if value is None else value + n
            elif hasattr(value, "shift_columns"):
                changed[f.name] = value.shift_columns(n)
        return replace(self, **changed)


def shiftable(value: Any) -> bool:
    """Whether run memory ``value`` can follow its canvas growing or shrinking on the left."""
    if value is None:
        return True
    if isinstance(value, RowMemory):
        return type(value).movable and all(shiftable(getattr(value, f.name)) for f in fields(value)
                                           if not f.metadata.get("derived") and "col_dim" not in f.metadata
                                           and hasattr(getattr(value, f.name), "shift_columns"))
    return hasattr(value, "shift_columns")


def _reset(f) -> Any:
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None if f.default is MISSING else f.default


class SoftStore:
    """Run memory of soft inputs (:class:`~dlm.messages.SoftInputs`): per batch row and canvas column, the soft
    embedding a forward recorded, for a later forward to add to its input embedding.

    The component asking for soft inputs creates one per generation (``SoftStore(rows, columns)``) and keeps it
    in its own run memory; the model writes it (as it writes a KV store) and reads it. dInfer's iteration
    smoothing keeps ``w · softmax(logits) @ E`` here (:mod:`dlm.iteration.smoothing`); ``entropy_bound`` keeps
    the soft embedding of the last step's tempered logits (DiffusionGemma's self-conditioning). ``values`` is
    allocated by the model at its first record (it knows the width and the dtype); a column holds zeros until
    something is recorded there. Rows follow
    the state (:meth:`take`, :meth:`cat`) and the columns follow the canvas (:meth:`shift_columns`).
    """

    def __init__(self, rows: int, columns: int, values: Tensor | None = None) -> None:
        self.rows, self.columns = rows, columns
        self.values = values  # [rows, columns, dim] in the model's dtype, or None: nothing recorded yet

    def allocate(self, like: Tensor) -> Tensor:
        """``values``, allocated as zeros [rows, columns, dim] with ``like``'s dim, dtype and device if absent
        (``like``: the model's input embedding matrix [vocab, dim])."""
        if self.values is None:
            self.values = like.new_zeros(self.rows, self.columns, like.shape[-1])
        return self.values

    def take(self, rows: Tensor) -> "SoftStore":
        values = None if self.values is None else self.values.index_select(0, rows.to(self.values.device))
        return SoftStore(len(rows), self.columns, values)

    def cat(self, other: "SoftStore") -> "SoftStore":
        if not isinstance(other, SoftStore) or other.columns != self.columns:
            raise ValueError(f"cannot join a soft store of {self.columns} columns with {other!r}")
        a, b = self.values, other.values
        if a is None and b is None:
            return SoftStore(self.rows + other.rows, self.columns)
        ref = a if a is not None else b
        a = ref.new_zeros(self.rows, *ref.shape[1:]) if a is None else a
        b = ref.new_zeros(other.rows, *ref.shape[1:]) if b is None else b.to(ref.device)
        return SoftStore(self.rows + other.rows, self.columns, torch.cat((a, b)))

    def shift_columns(self, n: int) -> "SoftStore":
        return SoftStore(self.rows, self.columns + n, shift_columns(self.values, n, 1, 0))

    def __repr__(self) -> str:
        shape = None if self.values is None else tuple(self.values.shape)
        return f"SoftStore(rows={self.rows}, columns={self.columns}, values={shape})"
