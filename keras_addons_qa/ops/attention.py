"""`attention`: scaled dot-product attention, exact under masks, in bounded
memory for long sequences."""

import keras
from keras import ops

from keras_addons_qa import _checks
from keras_addons_qa import _numerics
from keras_addons_qa.ops import _blockwise

# Queries and keys per block of the blockwise path under causal order or a
# sliding window (a block pair's float32 scores: heads * 256 KiB).
BLOCK_SIZE = 256


def attention(
    query,
    key,
    value,
    *,
    key_mask=None,
    mask=None,
    is_causal=False,
    sliding_window=None,
    distance_penalty=0.0,
    query_offset=None,
    scale=None,
    dropout=0.0,
    seed=None,
    return_weights=False,
    scores_budget_mb=128.0,
    block_size=None,
):
    """Scaled dot-product attention, exact under masks, in bounded memory.

    `softmax(query @ key^T * scale) @ value` per head, in the layout of
    `keras.ops.dot_product_attention`: `(batch, steps, heads, head_dim)`.
    Every mask is a bool, True = attend, and they combine by AND. A query
    that sees no key gets a zero output and zero gradients (never NaN,
    never a mean over masked keys); whatever masked keys hold (inf, NaN)
    reaches no output and no gradient. Logits, softmax and the gradient's
    statistics are float32 under every input dtype; the output has
    `value`'s dtype.

    When the float32 scores of one example, `heads * T * S * 4` bytes,
    exceed `scores_budget_mb`, attention runs block by block (Rabe and
    Staats, 2021; FlashAttention-2's backward), and blocks that causal
    order, the sliding window or trailing key padding hide entirely are
    never computed: causal attention does about half the work, a window
    `W` about `T * (W + block_size)`. Results equal the full path's to
    float32 rounding. Returned weights and dropout need the full scores,
    so they keep the full path. Where a backend's fused kernel computes the
    same thing, it takes the call (`_fused_kernel`: torch's
    `scaled_dot_product_attention`, cuDNN on a JAX GPU); each earns >= 10%
    on a `make bench` case.

    Args:
        query: `(B, T, N, H)`.
        key: `(B, S, K, H)`; `K` divides `N` (grouped-query attention: each
            key/value head serves `N // K` consecutive query heads).
        value: `(B, S, K, Hv)`.
        key_mask: Optional bool `(B, S)`: False keys (padding) get no
            weight.
        mask: Optional bool broadcastable to `(B, N, T, S)` (NumPy rules).
        is_causal: Whether query `i` sees only keys `j <= i + offset`
            (`offset` 0 without `query_offset`: the top-left aligned mask
            of Keras).
        sliding_window: Optional int >= 1: query `i` sees keys with
            `|i + offset - j| < sliding_window`.
        distance_penalty: A float >= 0: `distance_penalty * |i' - j|` is
            subtracted from each logit, `i'` the query's position on the
            key axis (`i + offset` with `query_offset`, otherwise
            `(i + 1/2) S / T - 1/2`).
        query_offset: Optional int or int scalar tensor: the position of
            the first query among the keys (decoding with a cache).
        scale: The logits' scale; defaults to `1 / sqrt(H)`.
        dropout: Dropout rate on the attention weights (full path).
        seed: Optional int or `keras.random.SeedGenerator` for dropout.
        return_weights: Also return the `(B, N, T, S)` attention weights
            (before dropout), in `value`'s dtype.
        scores_budget_mb: Memory, in MiB per example, above which attention
            runs block by block; `None` always computes the full scores.
        block_size: Queries and keys per block under causal order or a
            window (blockwise path); default 256.

    Returns:
        The `(B, T, N, Hv)` output, and the weights if asked.

    Example:

    >>> import numpy as np
    >>> from keras_addons_qa import ops as kaq_ops
    >>> q = np.random.rand(2, 6, 4, 8).astype("float32")
    >>> kv = np.random.rand(2, 6, 2, 8).astype("float32")
    >>> out = kaq_ops.attention(q, kv, kv, is_causal=True)
    >>> tuple(out.shape)
    (2, 6, 4, 8)
    """
    query, key, value = (ops.convert_to_tensor(x) for x in (query, key, value))
    k_len, kv_heads, heads, depth = _check_inputs(query, key, value)
    batch, q_len = _checks.static_shape(query.shape)[:2]
    if key_mask is not None:
        _checks.check_shape("key_mask", key_mask.shape, (batch, k_len))
    if sliding_window is not None:
        sliding_window = _checks.integer_at_least("sliding_window", sliding_window, 1)
    distance_penalty = _checks.non_negative_float("distance_penalty", distance_penalty)
    if scale is None:
        scale = 1.0 / float(depth) ** 0.5
    groups = heads // kv_heads

    if query_offset is None and not (sliding_window or distance_penalty or dropout or return_weights):
        context = _fused_kernel(query, key, value, key_mask, mask, bool(is_causal), float(scale),
                                groups, scores_budget_mb)
        if context is not None:
            return context

    key_valid = None
    if key_mask is not None:
        key_valid = ops.cast(key_mask, "bool")
        # Masked keys may hold anything: zeroed, for values and gradients.
        key = _numerics.sanitize(key, key_valid)
        value = _numerics.sanitize(value, key_valid)
    mask5 = None
    if mask is not None:
        mask5 = _grouped_mask(ops.cast(mask, "bool"), (batch, heads, q_len, k_len), kv_heads)
    if query_offset is not None and not isinstance(query_offset, int):
        query_offset = ops.cast(query_offset, "int32")

    problem = dict(
        scale=float(scale), causal=bool(is_causal), window=sliding_window,
        distance_penalty=distance_penalty, offset=query_offset,
        key_valid=key_valid, mask=mask5,
    )
    full = (
        scores_budget_mb is None
        or return_weights
        or dropout
        or not isinstance(q_len, int)
        or not isinstance(k_len, int)
        or heads * q_len * k_len * 4 <= scores_budget_mb * 2**20
    )
    layout = _blockwise.Layout(kv_heads, groups)
    if full:
        lengths = [n if isinstance(n, int) else ops.shape(x)[1] for n, x in ((q_len, query), (k_len, key))]
        spec = _blockwise.Problem(*lengths, rows=lengths[0], cols=lengths[1], **problem)
        return _full(spec, layout, query, key, value, dropout, seed, return_weights)
    budget = scores_budget_mb * 2**20
    block = min(block_size or BLOCK_SIZE, q_len, k_len)
    fit = _blockwise.fit
    if is_causal and q_len == k_len and not (
        sliding_window or query_offset is not None or mask5 is not None
    ):  # causal self-attention: unbanded rectangles and causal leaves
        spec = _blockwise.Problem(q_len, k_len, rows=block, cols=block, **problem)
        return _blockwise.causal_attention(spec, layout, query, key, value, budget, heads)
    if is_causal or sliding_window:
        rows = cols = block
    else:  # one key block: a plain softmax per query block
        rows, cols = fit(budget, heads, k_len), k_len
    spec = _blockwise.Problem(q_len, k_len, rows=rows, cols=cols, **problem)
    # The backward holds about twice the forward's block temporaries.
    return _blockwise.attention(spec, layout, query, key, value, fit(budget / 2, heads, q_len))


def position_mask(q_len, k_len, *, is_causal=False, sliding_window=None, query_offset=None):
    """The `(T, S)` bool mask of `attention`'s causal order and window: the
    keys each query sees by position alone (all True without either).

    Args:
        q_len: Number of queries `T`.
        k_len: Number of keys `S`.
        is_causal: As in `attention`.
        sliding_window: As in `attention`.
        query_offset: As in `attention`.
    """
    if sliding_window is not None:
        sliding_window = _checks.integer_at_least("sliding_window", sliding_window, 1)
    spec = _blockwise.Problem(
        q_len, k_len, scale=1.0, causal=bool(is_causal), window=sliding_window,
        distance_penalty=0.0, offset=query_offset, key_valid=None, mask=None,
        rows=q_len, cols=k_len,
    )
    rows = ops.expand_dims(ops.arange(q_len, dtype="int32"), 1)
    cols = ops.expand_dims(ops.arange(k_len, dtype="int32"), 0)
    visible = spec.order(rows, cols)
    if visible is None:
        return ops.ones((q_len, k_len), "bool")
    return ops.broadcast_to(visible, (q_len, k_len))


def _fused_kernel(query, key, value, key_mask, mask, is_causal, scale, groups, budget_mb):
    """The backend's own fused kernel where it applies and earns its place,
    else None.

    - JAX on a GPU, float16 / bfloat16, no mask but the key mask: cuDNN's
      flash attention, the key mask as sequence lengths
      (`_jax_attention`).
    - torch, no mask but the key mask and causal order, equal key and value
      head sizes: `scaled_dot_product_attention` (its flash kernel on a
      CPU, which takes a mask at no extra cost), through
      `keras.ops.dot_product_attention` (`_torch_attention`).
    """
    backend = keras.backend.backend()
    if backend == "jax" and mask is None:
        from keras_addons_qa import _jax_attention

        if not (_jax_attention.on_gpu() and query.dtype in _jax_attention.CUDNN_DTYPES):
            return None
        valid = None if key_mask is None else ops.cast(key_mask, "bool")
        context = _jax_attention.padded_attention(query, key, value, valid, scale, is_causal)
        if valid is None:
            return context
        return ops.where(_sees_a_key(valid, is_causal, query.shape[1]), context, 0.0)
    same_depth = _checks.fixed_sizes(key.shape[-1:]) == _checks.fixed_sizes(value.shape[-1:])
    if backend == "torch" and mask is None and same_depth:
        return _torch_attention(query, key, value, key_mask, is_causal, scale, groups, budget_mb)
    return None


def _torch_attention(query, key, value, key_mask, is_causal, scale, groups, budget_mb):
    """torch's `scaled_dot_product_attention`, padding and empty rows
    handled as the own path handles them; None where it does not pay.

    torch cannot take causal order and a mask together: causal order with a
    key mask becomes one `(B, 1, T, S)` mask, handed over only where one
    head's float32 scores fit the budget (beyond, the blockwise path takes
    the call: it skips the hidden blocks and holds no `T x S` tensor).
    """
    if groups > 1:
        key, value = ops.repeat(key, groups, axis=2), ops.repeat(value, groups, axis=2)
    if key_mask is None:
        return ops.dot_product_attention(query, key, value, scale=scale, is_causal=is_causal)
    q_len, k_len = (_checks.static_shape(x.shape)[1] for x in (query, key))
    if is_causal and (None in (q_len, k_len) or (
            budget_mb is not None and q_len * k_len * 4 > budget_mb * 2**20)):
        return None
    valid = ops.cast(key_mask, "bool")
    # Masked keys may hold anything: zeroed, for values and gradients.
    key = _numerics.sanitize(key, valid)
    value = _numerics.sanitize(value, valid)
    visible = valid[:, None, None, :]  # (B, 1, 1, S)
    if is_causal:
        visible = ops.logical_and(visible, position_mask(q_len, k_len, is_causal=True))
    # A query that sees no key attends to every (zeroed) key instead, so
    # that no softmax is empty; its output is zeroed below.
    sees = _sees_a_key(valid, is_causal, q_len)  # (B, T|1, 1, 1)
    visible = ops.logical_or(visible, ops.logical_not(ops.transpose(sees, (0, 2, 1, 3))))
    context = ops.dot_product_attention(query, key, value, mask=visible, scale=scale)
    return ops.where(sees, context, ops.zeros_like(context))


def _sees_a_key(key_valid, is_causal, q_len):
    """`(B, T|1, 1, 1)` bool: which queries see a valid key."""
    sees = ops.any(key_valid, axis=1, keepdims=True)
    if is_causal:  # query i sees a key iff the first valid key is at most i
        steps = ops.shape(key_valid)[1]
        first = ops.min(ops.where(key_valid, ops.arange(steps), steps), axis=1, keepdims=True)
        sees = ops.logical_and(ops.expand_dims(ops.arange(q_len), 0) >= first, sees)
    return ops.expand_dims(ops.expand_dims(sees, -1), -1)


def _full(spec, layout, query, key, value, dropout, seed, return_weights):
    """Attention with the whole `(B, K, G, T, S)` scores, by autodiff."""
    q = layout.queries(query) * ops.cast(spec.scale, query.dtype)
    k, v = layout.keys(key), layout.keys(value)
    logits, visible = spec.logits(q, k, 0, 0)
    weights = _numerics.masked_softmax(logits, visible)
    weights = ops.cast(weights, v.dtype)
    dropped = weights
    if dropout:
        dropped = keras.random.dropout(weights, dropout, seed=seed)
    context = ops.einsum("bkgrc,bkch->bkgrh", dropped, v)
    # (B, K, G, T, Hv) -> (B, T, N, Hv)
    shape = ops.shape(context)
    context = ops.transpose(context, (0, 3, 1, 2, 4))
    context = ops.reshape(context, (shape[0], shape[3], shape[1] * shape[2], shape[4]))
    if return_weights:
        shape = ops.shape(weights)
        return context, ops.reshape(weights, (-1, shape[1] * shape[2], shape[3], shape[4]))
    return context


def _check_inputs(query, key, value):
    """Checks the layouts; returns `(k_len, kv_heads, heads, depth)`.

    Head counts and sizes are fixed by a model's weights, so they are read
    as Python ints even where a tracer hands sizes over as tensors (torch's
    ONNX export); the steps stay unknown (None) there.
    """
    shapes = [tuple(x.shape) for x in (query, key, value)]
    if any(len(s) != 4 for s in shapes):
        raise ValueError(
            "`query`, `key` and `value` must have shape (batch, steps, heads, "
            f"head_dim). Received: query.shape={shapes[0]}, "
            f"key.shape={shapes[1]}, value.shape={shapes[2]}"
        )
    fixed = [_checks.fixed_sizes(s[2:]) for s in shapes]
    (heads, depth), (kv_heads, k_depth), (v_heads, _) = fixed
    k_len, v_len = (_checks.static_shape(s)[1] for s in shapes[1:])
    same_len = k_len is None or v_len is None or k_len == v_len
    if k_depth != depth or kv_heads != v_heads or not same_len or heads % kv_heads:
        raise ValueError(
            "`key` must have `query`'s head_dim, `value` `key`'s steps and "
            "heads, and the key heads must divide the query heads. Received: "
            f"query.shape={shapes[0]}, key.shape={shapes[1]}, "
            f"value.shape={shapes[2]}"
        )
    return k_len, kv_heads, heads, depth


def _grouped_mask(mask, scores_shape, kv_heads):
    """A mask broadcastable to `(B, N, T, S)` as `(B|1, K|1, G|1, T|1, S|1)`."""
    shape = _checks.static_shape(mask.shape)
    ok = len(shape) <= 4 and all(
        s is None or e is None or s in (1, e)
        for s, e in zip(shape[::-1], scores_shape[::-1])
    )
    if not ok:
        raise ValueError(
            "`mask` must broadcast to the scores' shape (batch, heads, "
            f"queries, keys) = {scores_shape}. Received: mask.shape={shape}"
        )
    while len(mask.shape) < 4:
        mask = ops.expand_dims(mask, 0)
    if mask.shape[1] == 1:
        return ops.expand_dims(mask, 1)
    size = list(ops.shape(mask))
    return ops.reshape(mask, [size[0], kv_heads, -1] + size[2:])
