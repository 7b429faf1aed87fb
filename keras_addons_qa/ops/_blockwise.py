"""Blockwise attention: `ops.attention`'s path for scores that do not fit.

Queries are cut into blocks of `rows`, keys into blocks of `cols`; no
tensor larger than one block pair's scores, `(B, K, G, rows, cols)`, is
alive at once, and the gradient recomputes the scores instead of storing
them (Rabe and Staats, 2021; FlashAttention-2, Dao 2023).

Which block pairs are computed: for each query block, the key blocks from
the first to the last that causal order, the sliding window and the end of
the valid keys leave visible (`key_range`), and symmetrically for each key
block (`query_range`). Blocks outside are never computed. The ranges are
computed from the lengths, block sizes and the query offset, so the inner
loops have a traced trip count; every block has the same static shape.

- Forward: a scan over query blocks; for each, a loop over its key range
  with an online softmax (running maximum, normalizer and context, all
  float32). With every key in one block, the backend's fused softmax.
- Backward without causal order or a window (one pass): a scan over key
  blocks, each against every query at once, giving the key block's dK and
  dV and adding its share of dQ to a full-size float32 carry
  (FlashAttention-2's backward).
- Backward with causal order or a window: two scans, one over key blocks
  for dK and dV, one over query blocks for dQ, each over its visible range
  only. (Adding each block's dQ into a full-size carry costs a copy of the
  carry per block in a TensorFlow graph, which would make a long banded
  sequence quadratic; the second scan recomputes the scores instead.)
- Causal self-attention (`causal_attention`) avoids the second scan for
  all but the diagonal: the causal triangle is cut into rectangles that
  are wholly visible, run as unbanded problems (one-pass backward), plus
  the causal diagonal blocks. The parts' results are merged by their
  log-sum-exps (`_attend`).

Tensors stay in the caller's layout, `(B, T, N, H)`: each block is sliced
from it and transposed to the head-major layout the products take
(`Layout`) when it is read, and each result block is transposed back as it
is written, so no whole-size copy of an input, the output or a gradient in
another layout exists. The scale is applied to each query block as it is
read (and to each key block of dQ's products), not to a scaled copy of the
queries.

The masks of a block come from `logits`: the key mask and a user mask are
sliced, causal order, the window and the distance penalty are computed from
the block's positions. Rows with no visible key get zero probabilities:
a zero context and zero gradients.
"""

from keras import ops

from keras_addons_qa import _numerics
from keras_addons_qa import _xla


class Problem:
    """The static facts of one attention call, and its block arithmetic.

    Blocks are head-major: `q` `(B, K, G, rows, H)` (`K` key/value heads,
    `G` query heads per key head), `k` `(B, K, cols, H)`, `v` `(B, K, cols,
    Hv)`; the mask is `(B|1, K|1, G|1, T|1, S|1)`, `key_valid` `(B, S)`.
    """

    def __init__(self, q_len, k_len, *, scale, causal, window, distance_penalty,
                 offset, key_valid, mask, rows, cols, diagonal=False):
        self.q_len, self.k_len = q_len, k_len
        self.diagonal = diagonal  # only the block pairs (i, i): `causal`'s leaves
        self.scale = scale
        self.causal, self.window = causal, window
        self.distance_penalty = distance_penalty
        self.offset = offset  # None, or an int32 scalar (int or tensor)
        self.rows, self.cols = rows, cols
        self.q_blocks = 1 if rows is q_len else -(-q_len // rows)
        self.k_blocks = 1 if cols is k_len else -(-k_len // cols)
        self._given = (key_valid, mask)
        # Padded to whole blocks (with False), so every block slices alike.
        whole = rows is q_len and cols is k_len  # one block: nothing to pad
        if key_valid is not None and not whole:
            key_valid = _pad(key_valid, 1, self.k_blocks * cols)
        if mask is not None and not whole:
            if mask.shape[3] != 1:
                mask = _pad(mask, 3, self.q_blocks * rows)
            if mask.shape[4] != 1:
                mask = _pad(mask, 4, self.k_blocks * cols)
        self.key_valid, self.mask = key_valid, mask
        # Keys past the last valid one (right padding) are skipped.
        self.key_end = k_len
        if key_valid is not None and not whole:
            steps = ops.arange(key_valid.shape[1], dtype="int32") + 1
            self.key_end = ops.max(ops.where(key_valid, steps, 0))

    def with_blocks(self, rows, cols):
        """The same problem cut into other blocks."""
        return Problem(
            self.q_len, self.k_len, scale=self.scale, causal=self.causal,
            window=self.window, distance_penalty=self.distance_penalty,
            offset=self.offset, key_valid=self._given[0], mask=self._given[1],
            rows=rows, cols=cols, diagonal=self.diagonal,
        )

    @property
    def given_key_valid(self):
        """The key mask as given, `(B, S)`, or None."""
        return self._given[0]

    def with_diagonal(self):
        """The same problem restricted to the diagonal block pairs."""
        problem = self.with_blocks(self.rows, self.cols)
        problem.diagonal = True
        return problem

    @property
    def banded(self):
        return bool(self.causal or self.window or self.diagonal)

    def _position(self, rows):
        return rows if self.offset is None else rows + self.offset

    def key_range(self, i):
        """`(first, count)` of the key blocks query block `i` sees."""
        first_row = i * self.rows
        last_row = ops.minimum(first_row + self.rows, self.q_len) - 1
        low, high = 0, ops.minimum(self.key_end, self.k_len) - 1
        if self.causal:
            high = ops.minimum(high, self._position(last_row))
        if self.window:
            low = ops.maximum(low, self._position(first_row) - self.window + 1)
            if not self.causal:
                high = ops.minimum(high, self._position(last_row) + self.window - 1)
        if self.diagonal:
            low = ops.maximum(low, first_row)
        return _block_span(low, high, self.cols, self.k_blocks)

    def query_range(self, j):
        """`(first, count)` of the query blocks that see key block `j`."""
        first_key = j * self.cols
        last_key = ops.minimum(first_key + self.cols, self.k_len) - 1
        low, high = 0, self.q_len - 1
        shift = 0 if self.offset is None else self.offset
        if self.causal:
            low = ops.maximum(low, first_key - shift)
        if self.window:
            high = ops.minimum(high, last_key + self.window - 1 - shift)
            if not self.causal:
                low = ops.maximum(low, first_key - self.window + 1 - shift)
        if self.diagonal:
            high = ops.minimum(high, last_key)
        first, count = _block_span(low, high, self.rows, self.q_blocks)
        # A key block wholly past the valid keys is seen by nobody.
        return first, ops.where(first_key < self.key_end, count, 0)

    def logits(self, q, k, i, j):
        """float32 logits `(B, K, G, rows, cols)` of query block `i`
        (scaled) against key block `j`, and which entries are visible (bool,
        broadcastable, or None for all)."""
        logits = _numerics.widen(ops.einsum("bkgrh,bkch->bkgrc", q, k))
        r = i * self.rows + ops.arange(self.rows, dtype="int32")
        c = j * self.cols + ops.arange(self.cols, dtype="int32")
        rows, cols = ops.expand_dims(r, 1), ops.expand_dims(c, 0)
        if self.distance_penalty:
            logits = logits - ops.cast(self._penalty(rows, cols), logits.dtype)
        parts = []
        if self.key_valid is not None:
            part = ops.slice(self.key_valid, [0, j * self.cols], [ops.shape(q)[0], self.cols])
            parts.append(ops.reshape(part, (-1, 1, 1, 1, self.cols)))
        if self.mask is not None:
            parts.append(self._mask_block(i, j))
        order = self.order(rows, cols)
        if order is not None:
            parts.append(order)
        if cols_padded(self) and self.key_valid is None and (
            self.mask is None or self.mask.shape[4] == 1
        ):
            parts.append(cols < self.k_len)  # zero keys padding the last block
        visible = None
        for part in parts:
            visible = part if visible is None else ops.logical_and(visible, part)
        return logits, visible

    def order(self, rows, cols):
        """Which of query rows `rows` `(R, 1)` see keys `cols` `(1, C)` by
        position (causal order and the window), or None for all."""
        position = self._position(rows)
        visible = None
        if self.causal:
            visible = cols <= position
        if self.window:
            band = ops.abs(position - cols) < self.window
            visible = band if visible is None else ops.logical_and(visible, band)
        return visible

    def _penalty(self, rows, cols):
        if self.offset is None:  # query positions mapped onto the key axis
            ratio = ops.cast(self.k_len, "float32") / ops.cast(self.q_len, "float32")
            aligned = (ops.cast(rows, "float32") + 0.5) * ratio - 0.5
        else:
            aligned = ops.cast(rows + self.offset, "float32")
        distance = ops.abs(aligned - ops.cast(cols, "float32"))
        return ops.minimum(self.distance_penalty * distance, 1e30)

    def _mask_block(self, i, j):
        mask = self.mask
        start = [0] * 5
        size = list(mask.shape)
        if size[3] != 1:
            start[3], size[3] = i * self.rows, self.rows
        if size[4] != 1:
            start[4], size[4] = j * self.cols, self.cols
        if size[3] == mask.shape[3] and size[4] == mask.shape[4]:
            return mask
        size[0] = ops.shape(mask)[0]
        return ops.slice(mask, start, size)


def cols_padded(problem):
    """Whether zero keys pad the last key block."""
    return problem.cols is not problem.k_len and problem.k_blocks * problem.cols != problem.k_len


def _block_span(low, high, size, blocks):
    """`(first, count)` of the blocks of `size` covering `[low, high]`."""
    low = ops.maximum(low, 0)
    first = ops.minimum(low // size, blocks)
    end = ops.minimum((ops.maximum(high, -1) + size) // size, blocks)
    return first, ops.maximum(end - first, 0)


def _pad(x, axis, length):
    if x.shape[axis] == length:
        return x
    pad = [[0, 0]] * len(x.shape)
    pad[axis] = [0, length - x.shape[axis]]
    return ops.pad(x, pad)


class _Blocks:
    """`x` cut into blocks of `size` along `axis` (zero-padded to whole
    blocks), each block passed through `view` (None, or a function: to the
    head-major layout, scaled, widened) and `column` (None, a number, or
    `_Blocks` of the viewed blocks' shape less their last axis) appended
    along the last axis. A block is read by a dynamic slice and viewed when
    it is used, so no copy of `x` in another layout exists; a single block
    is built once."""

    def __init__(self, x, axis, size, column=None, view=None):
        self.count = -(-x.shape[axis] // size)
        self.axis, self.size = axis, size
        self.view, self.column = view or _same, column
        self.x = _pad(x, axis, self.count * size)
        self.bare = None
        if self.count == 1:
            self.bare = self.view(self.x)
            self.x = self.bare if column is None else _with_column(self.bare, _column_block(column, 0))
            self.view, self.column = _same, None
        # `_fold` reads the values' dtype; its views do not cast.
        self.dtype = self.x.dtype
        self.width = x.shape[-1] + (column is not None)

    def __getitem__(self, i):
        x = self.x
        if self.count != 1:
            start = [0] * len(x.shape)
            start[self.axis] = i * self.size
            shape = list(ops.shape(x))
            shape[self.axis] = self.size
            x = ops.slice(x, start, shape)
        x = self.view(x)
        if self.column is None:
            return x
        return _with_column(x, _column_block(self.column, i))

    def without_column(self, block):
        """`block` (read from here) less its column: a single block's
        copy without it (built once), else a slice of `block`."""
        if self.bare is not None:
            return self.bare
        return block if self.column is None else block[..., :-1]


def _column_block(column, i):
    """Block `i` of a `_Blocks` column; a number is every block's."""
    return column if isinstance(column, float) else column[i]


def _same(x):
    return x


class Layout:
    """The caller's layout, `(B, T, N, H)` with `N = kv_heads * groups`
    query heads, and the head-major blocks the arithmetic runs on:
    `(B, K, G, rows, H)` for queries, `(B, K, cols, H)` for keys and
    values. Blocks are transposed one at a time, as they are read.

    Reshapes give the batch as -1: an ONNX export through tf2onnx wires a
    reshape whose dynamic batch is read from the tensor's shape to the
    wrong input (`tests/test_deploy.py`)."""

    def __init__(self, kv_heads, groups):
        self.kv_heads, self.groups = kv_heads, groups

    def queries(self, block):
        """`(B, rows, N, H)` -> `(B, K, G, rows, H)`."""
        shape = ops.shape(block)
        block = ops.reshape(block, (-1, shape[1], self.kv_heads, self.groups, shape[3]))
        return ops.transpose(block, (0, 2, 3, 1, 4))

    def keys(self, block):
        """`(B, cols, K, H)` -> `(B, K, cols, H)`, and back."""
        return ops.transpose(block, (0, 2, 1, 3))

    def scaled_queries(self, scale):
        """A view (for `_Blocks`): a `(B, rows, N, H)` block to `(B, K, G,
        rows, H)`, times `scale`, in the block's dtype."""
        return lambda block: self.queries(block) * ops.cast(scale, block.dtype)

    def from_queries(self, block):
        """`(B, K, G, rows, H)` -> `(B, rows, N, H)`, the inverse of
        `queries`."""
        shape = ops.shape(block)
        block = ops.transpose(block, (0, 3, 1, 2, 4))
        return ops.reshape(block, (-1, shape[3], shape[1] * shape[2], shape[4]))

    def statistics(self, x):
        """Per-query statistics `(B, K, G, T)` -> `(B, T, N)`."""
        shape = ops.shape(x)
        x = ops.transpose(x, (0, 3, 1, 2))
        return ops.reshape(x, (-1, shape[3], self.kv_heads * self.groups))

    def head_statistics(self, x):
        """`(B, T, N)` -> `(B, K, G, T)`, the inverse of `statistics`."""
        shape = ops.shape(x)
        x = ops.reshape(x, (-1, shape[1], self.kv_heads, self.groups))
        return ops.transpose(x, (0, 2, 3, 1))


def _unstack(x, length):
    """Stacked blocks in the caller's layout, `(n, B, size, ...)` ->
    `(B, length, ...)`, the padding cut off. (With one example the move
    is free: TensorFlow's transpose of a unit axis only reshapes.)"""
    shape = list(ops.shape(x))
    x = ops.reshape(ops.moveaxis(x, 0, 1), [shape[1], shape[0] * shape[2]] + shape[3:])
    return x if x.shape[1] == length else x[:, :length]


def _unblock(x, axis, length):
    """Stacked blocks `(n, ...)` -> one tensor along `axis`, the padding
    cut off."""
    x = ops.moveaxis(x, 0, axis)
    shape = list(ops.shape(x))
    x = ops.reshape(x, shape[:axis] + [-1] + shape[axis + 2:])
    index = [slice(None)] * len(x.shape)
    index[axis] = slice(0, length)
    return x[tuple(index)]


def _fold(problem, qi, i, k_blocks, v_blocks, first, count, value_dtype):
    """Online softmax of query block `i` over key blocks `first ..
    first + count - 1`: `(context, lse)` in float32."""
    shape = ops.shape(qi)
    stats = (
        ops.full(tuple(shape[:4]) + (1,), _numerics.FLOAT32_MIN, "float32"),
        ops.zeros(tuple(shape[:4]) + (1,), "float32"),
        ops.zeros(tuple(shape[:4]) + (v_blocks.width,), "float32"),
    )

    def step(j, stats):
        top, total, context = stats
        logits, visible = problem.logits(qi, k_blocks[j], i, j)
        if visible is not None:
            logits = ops.where(visible, logits, _numerics.FLOAT32_MIN)
        new_top = ops.maximum(top, ops.max(logits, axis=-1, keepdims=True))
        p = ops.exp(logits - new_top)
        if visible is not None:
            p = ops.where(visible, p, 0.0)
        decay = ops.exp(top - new_top)
        part = ops.einsum("bkgrc,bkch->bkgrh", ops.cast(p, value_dtype), v_blocks[j])
        return (
            new_top,
            total * decay + ops.sum(p, axis=-1, keepdims=True),
            context * decay + _numerics.widen(part),
        )

    if problem.k_blocks == 1:
        return _whole_rows(problem, qi, i, k_blocks[0], v_blocks[0], value_dtype)
    top, total, context = _xla.serial_fori_loop(first, first + count, step, stats)
    seen = total > 0
    safe = ops.where(seen, total, 1.0)
    context = ops.where(seen, context / safe, 0.0)
    lse = ops.where(seen, top + ops.log(safe), _numerics.FLOAT32_MIN)[..., 0]
    return context, lse


def _whole_rows(problem, qi, i, k, v, value_dtype):
    """`_fold` when every key is in one block: the backend's fused softmax,
    with the log-sum-exp read off it (`lse = max - log(max p)`, exact:
    the largest probability is `exp(max - lse)`)."""
    logits, visible = problem.logits(qi, k, i, 0)
    if visible is not None:
        logits = ops.where(visible, logits, _numerics.FLOAT32_MIN)
    top = ops.max(logits, axis=-1, keepdims=True)
    p = ops.softmax(logits, axis=-1)
    seen = top > _numerics.FLOAT32_MIN  # the row sees a key
    lse = top - ops.log(ops.max(p, axis=-1, keepdims=True))
    context = _numerics.widen(ops.einsum("bkgrc,bkch->bkgrh", ops.cast(p, value_dtype), v))
    return ops.where(seen, context, 0.0), ops.where(seen, lse, _numerics.FLOAT32_MIN)[..., 0]


def _forward(problem, layout, q_blocks, k_blocks, v_blocks):
    value_dtype = v_blocks.dtype

    def step(carry, i):
        first, count = problem.key_range(i)
        context, lse = _fold(problem, q_blocks[i], i, k_blocks, v_blocks, first, count, value_dtype)
        return carry, (layout.from_queries(context), lse)

    _, (contexts, lses) = _xla.serial_scan(
        step, (ops.zeros((), "int32"),), problem.q_blocks, ("float32", "float32")
    )
    return contexts, lses  # float32 (nq, B, rows, N, Hv), (nq, B, K, G, rows)


def _probs_and_dlogits(problem, qi, kj, vj, up, i, j):
    """Probabilities and logit gradients of a block pair, from operands
    that carry the softmax's row statistics in an extra column (see
    `_backward_part`): `[q, -lse] . [k, 1]` are the logits less the
    log-sum-exp, `[dO, -D] . [v, 1]` is `dP - D`."""
    logits, visible = problem.logits(qi, kj, i, j)
    p = ops.exp(logits)
    if visible is not None:
        p = ops.where(visible, p, 0.0)
    return p, p * ops.einsum("bkgrh,bkch->bkgrc", up, vj)


def _backward(problem, layout, scaled_keys, shifted):
    """float32 `(dq, dk, dv)` blocks in the caller's layout: `(nq, B, rows,
    N, H)`, `(nk, B, cols, K, H)`, `(nk, B, cols, K, Hv)`.

    `shifted` holds the blocks of `([q, -lse], [k, 1], [v, 1], [dO, -D])`
    (`_backward_part`; `q` scaled); the gradients' products take them less
    the column (`without_column`: a block pair reads and transposes two
    query blocks, not four). `scaled_keys` (`k * scale`) give the one-pass
    backward's dQ.
    """
    qs_blocks, ks_blocks, vs_blocks, ups_blocks = shifted
    k_shape = ops.shape(ks_blocks[0])
    k_shape = tuple(k_shape[:-1]) + (k_shape[-1] - 1,)
    v_shape = tuple(ops.shape(ups_blocks[0])[:2]) + (k_shape[2], ops.shape(ups_blocks[0])[-1] - 1)

    def key_step(d_q, j):
        ksj, vsj = ks_blocks[j], vs_blocks[j]
        kj = None if problem.banded else scaled_keys[j]

        def query_step(i, grads):
            d_k, d_v, d_q = grads
            qsi, upsi = qs_blocks[i], ups_blocks[i]
            p, d_logits = _probs_and_dlogits(problem, qsi, ksj, vsj, upsi, i, j)
            d_v = d_v + ops.einsum("bkgrc,bkgrh->bkch", p, ups_blocks.without_column(upsi))
            d_k = d_k + ops.einsum("bkgrc,bkgrh->bkch", d_logits, qs_blocks.without_column(qsi))
            if problem.banded:
                return d_k, d_v, d_q
            # One query block (`rows` is every query): dQ's share is added.
            return d_k, d_v, d_q + ops.expand_dims(
                ops.einsum("bkgrc,bkch->bkgrh", d_logits, kj), 0
            )

        grads = (ops.zeros(k_shape, "float32"), ops.zeros(v_shape, "float32"), d_q)
        first, count = problem.query_range(j)
        d_k, d_v, d_q = _xla.serial_fori_loop(first, first + count, query_step, grads)
        return d_q, (layout.keys(d_k), layout.keys(d_v))

    if problem.banded:
        d_q = ops.zeros((), "float32")  # unused: `_query_gradients` below
    else:  # every query in one block
        q_shape = ops.shape(qs_blocks[0])
        d_q = ops.zeros((1,) + tuple(q_shape[:-1]) + (q_shape[-1] - 1,), "float32")
    d_q, (d_k, d_v) = _xla.serial_scan(
        key_step, d_q, problem.k_blocks, ("float32", "float32")
    )
    if problem.banded:  # after dK and dV, not beside them (`_xla.after`)
        d_q = _query_gradients(problem, layout, shifted, after=d_v)
    else:
        d_q = ops.expand_dims(layout.from_queries(d_q[0]), 0)
    return d_q, d_k, d_v


def _query_gradients(problem, layout, shifted, after):
    qs_blocks, ks_blocks, vs_blocks, ups_blocks = shifted
    q_shape = ops.shape(qs_blocks[0])
    q_shape = tuple(q_shape[:-1]) + (q_shape[-1] - 1,)

    def step(carry, i):
        qsi, upsi = qs_blocks[i], ups_blocks[i]

        def key_step(j, d_q):
            ksj = ks_blocks[j]
            _, d_logits = _probs_and_dlogits(problem, qsi, ksj, vs_blocks[j], upsi, i, j)
            return d_q + ops.einsum("bkgrc,bkch->bkgrh", d_logits, ks_blocks.without_column(ksj))

        first, count = problem.key_range(i)
        d_q = _xla.serial_fori_loop(first, first + count, key_step, ops.zeros(q_shape, "float32"))
        return carry, (layout.from_queries(d_q * problem.scale),)

    start = _xla.after((ops.zeros((), "int32"),), after)
    _, (d_q,) = _xla.serial_scan(step, start, problem.q_blocks, ("float32",))
    return d_q


class _Part:
    """One piece of an attention call: a `Problem` over the queries and keys
    that `take_queries` / `take_keys` cut from the whole, with `put_queries`
    / `put_keys` putting its results back (`fill` elsewhere)."""

    def __init__(self, problem, back, take_queries=None, take_keys=None,
                 put_queries=None, put_keys=None):
        self.problem, self.back = problem, back
        same = lambda x, axis: x  # noqa: E731
        self.take_queries = take_queries or same
        self.take_keys = take_keys or same
        self.put_queries = put_queries or (lambda x, axis, fill: x)
        self.put_keys = put_keys or (lambda x, axis, fill: x)


def _forward_part(part, layout, scale, q, k, v):
    """float32 `(context, lse)` of one part over its queries: `(B, T, N,
    Hv)` and `(B, K, G, T)`."""
    problem = part.problem
    contexts, lses = _forward(
        problem, layout,
        _Blocks(part.take_queries(q, 1), 1, problem.rows, view=layout.scaled_queries(scale)),
        _Blocks(part.take_keys(k, 1), 1, problem.cols, view=layout.keys),
        _Blocks(part.take_keys(v, 1), 1, problem.cols, view=layout.keys),
    )
    return (
        part.put_queries(_unstack(contexts, problem.q_len), 1, 0.0),
        part.put_queries(_unblock(lses, 3, problem.q_len), 3, _numerics.FLOAT32_MIN),
    )


def _backward_part(part, layout, scale, q, k, v, up, lse, term):
    """float32 `(dq, dk, dv)` of one part, given the whole call's `lse`
    and softmax row term `D` (both `(B, K, G, T)`).

    Both statistics ride in an extra column of the operands of the two
    products that recompute a block (`[q, -lse] . [k, 1]`,
    `[dO, -D] . [v, 1]`), which subtract them instead of two passes over
    every block; the gradients' products take the same operands
    (`_backward`).
    """
    back = part.back
    rows, cols = back.rows, back.cols
    take_q, take_k = part.take_queries, part.take_keys
    # A row that sees no key has no visible entry: its shift is moot.
    shift = ops.where(lse > _numerics.FLOAT32_MIN, lse, 0.0)
    shift, term = take_q(-shift, 3), take_q(-term, 3)
    q, up = take_q(q, 1), take_q(up, 1)
    k, v = take_k(k, 1), take_k(v, 1)

    scaled = layout.scaled_queries(scale)

    def queries(block):
        return _numerics.widen(scaled(block))

    def upstream(block):
        return _numerics.widen(layout.queries(block))

    def keys(block):
        return _numerics.widen(layout.keys(block))

    def scaled_keys(block):  # dQ's products: the scale applied once per block
        return keys(block) * scale

    qs = _Blocks(q, 1, rows, column=_Blocks(shift, 3, rows), view=queries)
    ups = _Blocks(up, 1, rows, column=_Blocks(term, 3, rows), view=upstream)
    ks, vs = _Blocks(k, 1, cols, 1.0, view=keys), _Blocks(v, 1, cols, 1.0, view=keys)
    d_q, d_k, d_v = _backward(back, layout, _Blocks(k, 1, cols, view=scaled_keys), (qs, ks, vs, ups))
    return (
        part.put_queries(_unstack(d_q, back.q_len), 1, 0.0),
        part.put_keys(_unstack(d_k, back.k_len), 1, 0.0),
        part.put_keys(_unstack(d_v, back.k_len), 1, 0.0),
    )


def _with_column(x, column):
    """`x` with `column` (a tensor of `x`'s shape less its last axis, or a
    number) appended along the last axis."""
    if isinstance(column, float):
        column = ops.full_like(x[..., :1], column)
    else:
        column = ops.expand_dims(column, -1)
    return ops.concatenate([x, column], axis=-1)


def attention(problem, layout, q, k, v, backward_cols):
    """Blockwise attention of `q` `(B, T, N, H)`, `k` `(B, S, K, H)`, `v`
    `(B, S, K, Hv)` (`layout` says how heads group); returns the `(B, T,
    N, Hv)` context in `v`'s dtype.

    Without causal order or a window, the backward pass takes every query
    at once against `backward_cols` keys per block (the one-pass backward);
    otherwise it uses the forward's blocks.
    """
    back = problem if problem.banded else problem.with_blocks(problem.q_len, backward_cols)
    return _attend([_Part(problem, back)], layout, problem.scale, q, k, v)


def causal_attention(problem, layout, q, k, v, budget, heads):
    """Causal self-attention (`T == S`, no offset, window or user mask) as
    unbanded rectangles and small causal leaves.

    The sequence is padded to `n = 2^L` blocks of `problem.rows` steps. At
    level `l` the queries of each odd half of the `2^l` spans attend to all
    keys of the even half before it: a rectangle every key of which every
    query sees, so it runs as one unbanded problem (the one-pass backward)
    with the `2^l` rectangles folded into the batch. What remains is the
    diagonal blocks, causal within themselves (`diagonal` problems). The
    parts' softmaxes are merged by their log-sum-exps; their gradients use
    the merged statistics. Every computed block pair has a visible entry.
    """
    t, block = problem.q_len, problem.rows
    levels = max(0, (-(-t // block) - 1).bit_length())
    block = -(-t // 2**levels)
    padded = block * 2**levels
    leaves = problem.with_blocks(block, block).with_diagonal()
    parts = [_Part(leaves, leaves)]
    key_valid = problem.given_key_valid
    if levels:
        valid = ops.arange(padded, dtype="int32") < t
        if key_valid is None:
            key_valid = ops.broadcast_to(ops.expand_dims(valid, 0), (ops.shape(q)[0], padded))
        else:
            key_valid = ops.logical_and(_pad(key_valid, 1, padded), valid)
    for level in range(levels):
        spans, half = 2**level, padded // 2 ** (level + 1)
        valid = _take_half(key_valid, 1, spans, 0, padded)
        scale = heads * spans
        rect = Problem(
            half, half, scale=problem.scale, causal=False, window=None,
            distance_penalty=problem.distance_penalty, offset=half,
            key_valid=valid, mask=None, rows=fit(budget, scale, half), cols=half,
        )
        parts.append(_Part(
            rect, rect.with_blocks(half, fit(budget, scale, half)),
            take_queries=_halves(spans, 1, padded),
            take_keys=_halves(spans, 0, padded),
            put_queries=_put_halves(spans, 1, t),
            put_keys=_put_halves(spans, 0, t),
        ))
    return _attend(parts, layout, problem.scale, q, k, v)


def fit(budget, heads, length):
    """Rows whose float32 scores against `length` columns fit the budget."""
    return max(1, min(length, int(budget // (heads * length * 4))))


def _take_half(x, axis, spans, half, padded):
    """`x` padded to `padded` along `axis`, cut into `spans` spans of two
    halves, half `half` of each, the spans folded into the batch axis 0."""
    x = _pad(x, axis, padded)
    shape = list(ops.shape(x))
    x = ops.reshape(x, shape[:axis] + [spans, 2, padded // (2 * spans)] + shape[axis + 1:])
    index = [slice(None)] * len(x.shape)
    index[axis + 1] = half
    x = ops.moveaxis(x[tuple(index)], axis, 1)
    shape = list(ops.shape(x))
    return ops.reshape(x, [-1] + shape[2:])


def _halves(spans, half, padded):
    return lambda x, axis: _take_half(x, axis, spans, half, padded)


def _put_halves(spans, half, length):
    """The inverse of `_halves`: the other halves filled, the padding cut."""
    def put(x, axis, fill):
        shape = list(ops.shape(x))
        x = ops.moveaxis(ops.reshape(x, [-1, spans] + shape[1:]), 1, axis)
        other = ops.full_like(x, fill)
        x = ops.stack((other, x) if half else (x, other), axis=axis + 1)
        shape = list(ops.shape(x))
        x = ops.reshape(x, shape[:axis] + [-1] + shape[axis + 3:])
        index = [slice(None)] * len(x.shape)
        index[axis] = slice(0, length)
        return x[tuple(index)]

    return put


def _attend(parts, layout, scale, q, k, v):
    @_numerics.custom_gradient
    def attend(q, k, v):
        context = lse = None
        for part in parts:  # one after the other (each holds large blocks)
            inputs = (q, k, v) if context is None else _xla.after((q, k, v), lse)
            c, l = _forward_part(part, layout, scale, *inputs)
            if context is None:
                context, lse = c, l
                continue
            merged = ops.logaddexp(lse, l)
            context = (context * ops.expand_dims(layout.statistics(ops.exp(lse - merged)), -1)
                       + c * ops.expand_dims(layout.statistics(ops.exp(l - merged)), -1))
            lse = merged

        def grad(upstream):
            # D_i = sum_j P_ij dP_ij = dO_i . O_i, the softmax gradient's row term.
            term = layout.head_statistics(ops.sum(_numerics.widen(upstream) * context, axis=-1))
            grads = None
            for part in parts:
                inputs = (q, k, v, upstream)
                if grads is not None:
                    inputs = _xla.after(inputs, grads[0])
                part_grads = _backward_part(part, layout, scale, *inputs, lse, term)
                grads = part_grads if grads is None else [
                    a + b for a, b in zip(grads, part_grads)
                ]
            d_q, d_k, d_v = grads
            return (
                ops.cast(d_q, q.dtype), ops.cast(d_k, k.dtype), ops.cast(d_v, v.dtype)
            )

        return ops.cast(context, v.dtype), grad

    return attend(*(_xla.read(x) for x in (q, k, v)))
