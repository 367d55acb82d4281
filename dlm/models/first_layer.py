"""Layer 0's query/key/value products per token: made once per token id, not once per column and step.

The first layer's attention products of a column are ``RMSNorm(embed(token)) · W_q|k|v``: a function of the token
alone (RoPE, which needs the position, comes after them). A denoising step recomputes them at every column it
computes although almost none changed token: a cached ``dual`` step recomputes the 32 columns of its block, of
which one was committed since the last step and the others are MASK or committed earlier; a refresh recomputes the
whole canvas, the prompt included. :class:`TokenProjections` keeps the products of every token id it has met, so
a forward makes them only for the ids it meets for the first time, and gathers the rest. At the vs-Fast-dLLM shape
(docs/benchmarks.md) that is 3 of the 86 d_model² multiply-adds of products a column costs per step (78 in the
layers, 8 in the head).

**Same values, not nearly.** The table's rows must be the rows the forward would have made. A row of MKL's float32
or bfloat16 matrix product of 4 or more rows equals, bit for bit, the same row of any larger product (measured:
docs/benchmarks.md), so the table is filled by products of at least 4 rows and serves forwards of at least 4
columns. That is a property of the BLAS, not a promise: the memo measures it once per table with the layer's own
weights (:func:`rows_are_exact`) and stays off where it does not hold (MKL's float64 product, whose last
``m mod 4`` rows take another kernel). tests/test_first_layer.py compares logits, K/V and tokens with the memo off.

Where it runs: inference on a CPU, outside ``torch.compile``, with token inputs (soft inputs feed embeddings that
are not a function of the id). On a GPU a step is bound by reading the weights, not by these products, and the
look-up would add a host sync; there the forward is unchanged. The table is cleared when any weight it depends on
changes (a new tensor, or one written in place, e.g. by training) and when it would pass ``max_bytes``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

# the fewest rows of a product whose rows are exact (a float32 product of 1-3 rows takes another kernel): the fewest
# rows a pruned last layer computes (Transformer.output_rows), and those this table is filled by and serves
MIN_EXACT_ROWS = 4


def rows_are_exact(make, vocab: int, device: torch.device) -> bool:
    """Whether ``make`` (ids [m] -> products [m, width]) gives each row the same bits whatever product of at least
    :data:`MIN_EXACT_ROWS` rows it is made in, and wherever in it: 8 rows made alone, their first 4 and first 5
    alone, and the 8 inside products of 37 rows (at its end) and of 133 (in its middle). Measured once per table,
    with the layer's weights: true of MKL's float32 and bfloat16 products, false of its float64 one (whose last
    ``m mod 4`` rows take another kernel), where the memo then stays off."""
    ids = lambda lo, hi: torch.arange(lo, hi, device=device) % vocab  # noqa: E731
    eight = make(ids(0, 8))
    for n in (MIN_EXACT_ROWS, 5):
        if not torch.equal(make(ids(0, n)), eight[:n]):
            return False
    for size, at in ((37, 29), (133, 70)):
        big = make(torch.cat((ids(8, 8 + at), ids(0, 8), ids(8 + at, size))))
        if not torch.equal(big[at : at + 8], eight):
            return False
    return True


def _version(t: Tensor) -> int:
    try:
        return t._version
    except RuntimeError:  # an inference tensor keeps no version counter: it cannot be written in place either
        return 0


class TokenProjections:
    """The first layer's attention products (:meth:`~dlm.models.layers.Attention.raw` of the normed embedding) of
    every token id met so far, in the model's dtype: a table ``[n, width]`` and each id's slot in it."""

    def __init__(self, max_bytes: int = 256 << 20) -> None:
        self.max_bytes = max_bytes
        self.exact = False  # rows_are_exact for the current weights
        self.table: Tensor | None = None
        self.slot: Tensor | None = None  # [vocab] long: the id's row of the table, -1 when not met
        self.count = 0
        self._key: tuple | None = None

    def clear(self) -> None:
        self.table, self.slot, self.count, self._key, self.exact = None, None, 0, None, False

    @staticmethod
    def applies(net: nn.Module, ids: Tensor, embeds: Tensor | None) -> bool:
        """Whether the memo serves this forward of ``net`` (see the module docstring)."""
        return (embeds is None and ids.device.type == "cpu" and not net.training and len(net.blocks) > 0
                and ids.numel() >= MIN_EXACT_ROWS and not torch.compiler.is_compiling())

    def raw(self, embed: nn.Embedding, block: nn.Module, ids: Tensor) -> Tensor | None:
        """Layer 0's products of the tokens ``ids`` [b, q]: [b, q, width], as ``block.attn.raw(block.attn_norm(
        embed(ids)))`` gives them; None where the memo does not serve (products that are not exact,
        :func:`rows_are_exact`, or more distinct ids in one forward than ``max_bytes`` holds). The result is an
        inference tensor: the table is written in inference mode whatever the caller's mode, so it never records
        autograd history."""
        with torch.inference_mode():
            return self._raw(embed, block, ids)

    def _raw(self, embed: nn.Embedding, block: nn.Module, ids: Tensor) -> Tensor | None:
        params = (embed.weight, *block.attn_norm.parameters(), *block.attn.parameters())
        key = tuple((p.data_ptr(), _version(p), p.dtype) for p in params)
        if key != self._key:
            self.clear()
            self._key = key
            self.exact = rows_are_exact(lambda rows: self._make(embed, block, rows), embed.num_embeddings, ids.device)
        if not self.exact:
            return None
        flat = ids.reshape(-1)
        if self.slot is None:
            self.slot = torch.full((embed.num_embeddings,), -1, dtype=torch.long, device=ids.device)
        where = self.slot[flat]
        missing = where < 0
        if bool(missing.any()):
            new = flat[missing].unique()
            attn = block.attn
            row_bytes = (attn.n_heads + 2 * attn.n_kv_heads) * attn.head_dim * embed.weight.element_size()
            if (self.count + len(new)) * row_bytes > self.max_bytes:  # full: start again with this forward's ids
                new = flat.unique()
                if len(new) * row_bytes > self.max_bytes:
                    return None
                self.slot.fill_(-1)
                self.count = 0
            self._add(embed, block, new, self.max_bytes // row_bytes)
            where = self.slot[flat]
        return self.table[where].view(*ids.shape, -1)

    @staticmethod
    def _make(embed: nn.Embedding, block: nn.Module, ids: Tensor) -> Tensor:
        """The products of ``ids`` [m] made as one product: [m, width]."""
        return block.attn.raw(block.attn_norm(embed(ids)[None]))[0]

    def _add(self, embed: nn.Embedding, block: nn.Module, new: Tensor, capacity: int) -> None:
        """Make the products of the ids ``new`` [n] (not in the table) and file them; ``capacity``: the most rows
        the table may hold (the caller made room for these)."""
        n = len(new)
        rows = torch.cat((new, new[-1:].expand(max(0, MIN_EXACT_ROWS - n))))
        made = self._make(embed, block, rows)[:n]  # [n, width]
        end = self.count + n
        if self.table is None or end > len(self.table):
            table = made.new_empty((min(max(256, 2 * end), capacity), made.shape[1]))
            if self.table is not None:
                table[: self.count] = self.table[: self.count]
            self.table = table
        self.table[self.count : end] = made
        self.slot[new] = torch.arange(self.count, end, device=new.device)
        self.count = end
