"""Attention over chunks of queries and keys, in bounded memory.

`QKVAttention`'s path for long sequences. The full path holds the
`(B, N, T, S)` scores and, for the gradient, several tensors of that size;
here no tensor larger than one chunk's scores, `(B, N, rows, S)` or
`(B, N, T, cols)`, is ever alive, and the gradient recomputes the scores
chunk by chunk instead of storing them (Rabe and Staats, 2021,
"Self-attention does not need O(n^2) memory"; the backward pass is
FlashAttention's).

- Forward: a loop over query chunks. Each chunk's scores cover every key,
  so its softmax is exact in one step; the chunk keeps its context and the
  log of its softmax's normalizer (`lse`, `(B, N, T)` floats in all).
- Backward (a custom gradient): a loop over query chunks gives the query
  gradient, a loop over key chunks the key and value gradients; each
  recomputes its probabilities as `exp(logits - lse)`.

Masks never exist at full size: the key mask is sliced per chunk, causal
order, the sliding window and the distance penalty are computed from the
chunk's positions, and a user's `attention_mask` is sliced along the axis
that has the chunk's length (size-1 axes broadcast). Rows with no visible
key get zero probabilities, so a zero context and a zero gradient.

Everything is `keras.ops`, with static shapes: the loops are
`keras.ops.fori_loop` over a fixed number of chunks (one chunk at a time on
TensorFlow too, see `_xla.serial_fori_loop`), the lengths are
padded up to a whole number of chunks, and results go into buffers of
fixed shape.
"""

from keras import ops

from keras_addons_qa import _buffers
from keras_addons_qa import _numerics
from keras_addons_qa import _xla


def chunk_length(heads, other_length, budget_bytes):
    """Rows per chunk whose float32 scores, per example, fit the budget."""
    return max(1, int(budget_bytes // (heads * other_length * 4)))


def attention(
    q,
    k,
    v,
    *,
    scale,
    key_valid=None,
    mask=None,
    causal=False,
    window=None,
    distance_penalty=0.0,
    rows,
    cols,
):
    """Masked softmax attention of `(B, T, N, H)` heads, chunk by chunk.

    Args:
        q: `(B, T, N, H)` queries (not yet scaled).
        k: `(B, S, N, H)` keys.
        v: `(B, S, N, Hv)` values.
        scale: The logits' scale, a Python float.
        key_valid: Optional `(B, S)` bool.
        mask: Optional bool broadcastable to `(B, N, T, S)`, rank 4.
        causal: Whether query `i` sees only keys `j <= i`.
        window: Optional int: query `i` sees keys with `|i - j| < window`.
        distance_penalty: `distance_penalty * |i' - j|` is subtracted from
            the logits, `i'` the query position on the key scale.
        rows: Queries per chunk (static int).
        cols: Keys per chunk in the key-gradient pass (static int).

    Returns:
        The `(B, T, N, Hv)` context in `v`'s dtype.
    """
    q_len, k_len = q.shape[1], k.shape[1]
    spec = _Spec(q_len, k_len, scale, causal, window, distance_penalty)

    @ops.custom_gradient
    def attend(q, k, v):
        context, lse = _forward(spec, q, k, v, key_valid, mask, rows)

        def grad(*args, upstream=None):
            if upstream is None:  # TensorFlow and JAX; torch passes it by name
                (upstream,) = args
            return _backward(
                spec, q, k, v, key_valid, mask, context, lse, upstream, rows, cols
            )

        return context, grad

    return attend(q, k, v)


class _Spec:
    """The static facts of one attention call."""

    def __init__(self, q_len, k_len, scale, causal, window, distance_penalty):
        self.q_len, self.k_len = q_len, k_len
        self.scale = scale
        self.causal, self.window = causal, window
        self.distance_penalty = distance_penalty

    def logits(self, q, k, r, s, key_valid, mask):
        """float32 logits of queries `q` at positions `r` against keys `k` at
        positions `s`, `(B, N, len(r), len(s))`, and their visibility (bool,
        broadcastable, or None)."""
        logits = ops.einsum("brnh,bcnh->bnrc", q, k)
        logits = _numerics.widen(logits)
        rows, cols = ops.expand_dims(r, 1), ops.expand_dims(s, 0)
        if self.distance_penalty:
            aligned = (ops.cast(rows, "float32") + 0.5) * (self.k_len / self.q_len) - 0.5
            distance = ops.abs(aligned - ops.cast(cols, "float32"))
            logits = logits - ops.minimum(self.distance_penalty * distance, 1e30)
        parts = []
        if key_valid is not None:
            parts.append(ops.expand_dims(ops.expand_dims(key_valid, 1), 1))
        if mask is not None:
            parts.append(mask)
        if self.causal:
            parts.append(rows >= cols)
        if self.window:
            parts.append(ops.abs(rows - cols) < self.window)
        visible = None
        for part in parts:
            visible = part if visible is None else ops.logical_and(visible, part)
        return logits, visible


def _chunks(x, axis, size):
    """`x` padded along `axis` to a multiple of `size` and split there:
    `(..., count, size, ...)`; the padding is zeros (False)."""
    length = x.shape[axis]
    count = -(-length // size)
    pad = [[0, 0]] * len(x.shape)
    pad[axis] = [0, count * size - length]
    if count * size != length:
        x = ops.pad(x, pad)
    shape = list(ops.shape(x))
    return ops.reshape(x, shape[:axis] + [count, size] + shape[axis + 1 :]), count


def _unchunk(chunks, axis, length):
    """Inverse of `_chunks` for a buffer `(count, ...)` holding the chunks
    along its first axis, each with the chunk at `axis`."""
    chunks = ops.moveaxis(chunks, 0, axis)
    shape = list(ops.shape(chunks))
    whole = ops.reshape(chunks, shape[:axis] + [-1] + shape[axis + 2 :])
    index = [slice(None)] * len(whole.shape)
    index[axis] = slice(0, length)
    return whole[tuple(index)]


def _mask_along(mask, axis, size):
    """A mask's chunks along `axis` if it spans it, or None if it
    broadcasts there (size 1)."""
    if mask is None or mask.shape[axis] == 1:
        return None
    chunks, _ = _chunks(mask, axis, size)
    return chunks


def _forward(spec, q, k, v, key_valid, mask, rows):
    q = ops.multiply(q, ops.cast(spec.scale, q.dtype))
    q_chunks, count = _chunks(q, 1, rows)  # (B, count, rows, N, H)
    mask_chunks = _mask_along(mask, 2, rows)  # (B|1, N|1, count, rows, S|1)
    keys = ops.arange(spec.k_len, dtype="int32")
    batch, heads = ops.shape(q)[0], q.shape[2]

    def step(i, carry):
        contexts, lses = carry
        r = i * rows + ops.arange(rows, dtype="int32")
        chunk_mask = mask if mask_chunks is None else mask_chunks[:, :, i]
        logits, visible = spec.logits(q_chunks[:, i], k, r, keys, key_valid, chunk_mask)
        if visible is not None:
            logits = ops.where(visible, logits, _numerics.FLOAT32_MIN)
        top = ops.max(logits, axis=-1, keepdims=True)
        p = ops.exp(logits - top)
        if visible is not None:
            p = ops.where(visible, p, 0.0)
        total = ops.sum(p, axis=-1, keepdims=True)
        seen = total > 0
        probs = p / ops.where(seen, total, 1.0)
        lse = ops.where(seen, top + ops.log(ops.where(seen, total, 1.0)), 0.0)
        context = ops.einsum("bnrc,bcnh->brnh", ops.cast(probs, v.dtype), v)
        return _buffers.put(contexts, i, context), _buffers.put(lses, i, lse[..., 0])

    contexts = ops.zeros((count, batch, rows, heads, v.shape[-1]), v.dtype)
    lses = ops.zeros((count, batch, heads, rows), "float32")
    contexts, lses = _xla.serial_fori_loop(0, count, step, (contexts, lses))
    context = _unchunk(contexts, 1, spec.q_len)  # (B, T, N, Hv)
    lse = _unchunk(lses, 2, spec.q_len)  # (B, N, T)
    return context, lse


def _backward(spec, q, k, v, key_valid, mask, context, lse, upstream, rows, cols):
    dtypes = (q.dtype, k.dtype, v.dtype)
    q = _numerics.widen(q) * spec.scale
    k, v = _numerics.widen(k), _numerics.widen(v)
    upstream = _numerics.widen(upstream)
    # D_i = sum_j P_ij dP_ij = dO_i . O_i, the softmax gradient's row term.
    row_term = ops.transpose(ops.sum(upstream * _numerics.widen(context), axis=-1), (0, 2, 1))
    batch, heads = ops.shape(q)[0], q.shape[2]
    queries = ops.arange(spec.q_len, dtype="int32")
    keys = ops.arange(spec.k_len, dtype="int32")

    def probs_and_dlogits(q_part, k_part, v_part, up_part, r, s, valid, mask_part, lse_part, term):
        logits, visible = spec.logits(q_part, k_part, r, s, valid, mask_part)
        p = ops.exp(logits - ops.expand_dims(lse_part, -1))
        if visible is not None:
            p = ops.where(visible, p, 0.0)
        d_p = ops.einsum("brnh,bcnh->bnrc", up_part, v_part)
        return p, p * (d_p - ops.expand_dims(term, -1))

    # Query gradients, chunk by chunk over queries.
    q_chunks, count = _chunks(q, 1, rows)
    up_chunks, _ = _chunks(upstream, 1, rows)
    lse_chunks, _ = _chunks(lse, 2, rows)
    term_chunks, _ = _chunks(row_term, 2, rows)
    mask_rows = _mask_along(mask, 2, rows)

    def query_step(i, d_qs):
        r = i * rows + ops.arange(rows, dtype="int32")
        chunk_mask = mask if mask_rows is None else mask_rows[:, :, i]
        _, d_logits = probs_and_dlogits(
            q_chunks[:, i], k, v, up_chunks[:, i], r, keys, key_valid, chunk_mask,
            lse_chunks[:, :, i], term_chunks[:, :, i],
        )
        d_q = ops.einsum("bnrc,bcnh->brnh", d_logits, k) * spec.scale
        return _buffers.put(d_qs, i, d_q)

    d_qs = ops.zeros((count, batch, rows, heads, q.shape[-1]), "float32")
    d_q = _unchunk(_xla.serial_fori_loop(0, count, query_step, d_qs), 1, spec.q_len)

    # Key and value gradients, chunk by chunk over keys.
    k_chunks, count = _chunks(k, 1, cols)
    v_chunks, _ = _chunks(v, 1, cols)
    valid_chunks = None if key_valid is None else _chunks(key_valid, 1, cols)[0]
    mask_cols = _mask_along(mask, 3, cols)

    def key_step(j, carry):
        d_ks, d_vs = carry
        s = j * cols + ops.arange(cols, dtype="int32")
        chunk_mask = mask if mask_cols is None else mask_cols[:, :, :, j]
        valid = None if valid_chunks is None else valid_chunks[:, j]
        p, d_logits = probs_and_dlogits(
            q, k_chunks[:, j], v_chunks[:, j], upstream, queries, s, valid, chunk_mask,
            lse, row_term,
        )
        d_v = ops.einsum("bnrc,brnh->bcnh", p, upstream)
        d_k = ops.einsum("bnrc,brnh->bcnh", d_logits, q)
        return _buffers.put(d_ks, j, d_k), _buffers.put(d_vs, j, d_v)

    d_ks = ops.zeros((count, batch, cols, heads, k.shape[-1]), "float32")
    d_vs = ops.zeros((count, batch, cols, heads, v.shape[-1]), "float32")
    d_ks, d_vs = _xla.serial_fori_loop(0, count, key_step, (d_ks, d_vs))
    d_k = _unchunk(d_ks, 1, spec.k_len)
    d_v = _unchunk(d_vs, 1, spec.k_len)
    return tuple(ops.cast(g, dtype) for g, dtype in zip((d_q, d_k, d_v), dtypes))
