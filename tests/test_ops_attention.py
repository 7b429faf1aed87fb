"""`ops.attention` against a NumPy reference (outputs and gradients), its
blockwise path against its full path, and the blocks it computes."""

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from keras_addons_qa import ops as kaq_ops
from keras_addons_qa.ops import _blockwise
from tests import harness


def reference(q, k, v, up, key_mask=None, mask=None, is_causal=False,
              sliding_window=None, distance_penalty=0.0, query_offset=None):
    """Output, weights and `(dq, dk, dv)` of `sum(output * up)`, in float64."""
    q, k, v, up = (np.asarray(x, np.float64) for x in (q, k, v, up))
    _, t, heads, depth = q.shape
    s, kv_heads = k.shape[1], k.shape[2]
    groups = heads // kv_heads
    k, v = np.repeat(k, groups, axis=2), np.repeat(v, groups, axis=2)
    scale = 1 / np.sqrt(depth)
    logits = np.einsum("btnh,bsnh->bnts", q, k) * scale
    rows, cols = np.arange(t)[:, None], np.arange(s)[None, :]
    position = rows + (query_offset or 0)
    if distance_penalty:
        aligned = position if query_offset is not None else (rows + 0.5) * s / t - 0.5
        logits = logits - distance_penalty * np.abs(aligned - cols)
    visible = np.ones(logits.shape, bool)
    if key_mask is not None:
        visible &= np.asarray(key_mask, bool)[:, None, None, :]
    if mask is not None:
        visible &= np.broadcast_to(np.asarray(mask, bool), visible.shape)
    if is_causal:
        visible &= cols <= position
    if sliding_window:
        visible &= np.abs(position - cols) < sliding_window
    logits = np.where(visible, logits, -np.inf)
    top = np.max(logits, -1, keepdims=True)
    p = np.where(visible, np.exp(logits - np.where(np.isfinite(top), top, 0)), 0)
    total = p.sum(-1, keepdims=True)
    p = np.where(total > 0, p / np.where(total > 0, total, 1), 0)
    out = np.einsum("bnts,bsnh->btnh", p, v)
    d_v = np.einsum("bnts,btnh->bsnh", p, up)
    d_p = np.einsum("btnh,bsnh->bnts", up, v)
    d_logits = p * (d_p - np.sum(d_p * p, -1, keepdims=True))
    d_q = np.einsum("bnts,bsnh->btnh", d_logits, k) * scale
    d_k = np.einsum("bnts,btnh->bsnh", d_logits, q) * scale

    def fold(g):  # the query heads' shares summed per key/value head
        return g.reshape(g.shape[:2] + (kv_heads, groups, -1)).sum(3)

    return out, p, (d_q, fold(d_k), fold(d_v))


def _run(q, k, v, up, mode="eager", **kwargs):
    """`ops.attention`'s output and the gradients of `sum(output * up)`."""
    variables = [keras.Variable(x) for x in (q, k, v)]
    upstream = keras.ops.convert_to_tensor(up)

    def value():
        out = kaq_ops.attention(*variables, **kwargs)
        return keras.ops.sum(keras.ops.cast(out, "float32") * upstream), out

    if harness.BACKEND == "jax":
        import jax

        def pure(values):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                total, out = value()
            return total, out

        grad_fn = jax.value_and_grad(pure, has_aux=True)
        if mode != "eager":
            grad_fn = jax.jit(grad_fn)
        (_, out), grads = grad_fn([x.value for x in variables])
        return harness.to_numpy(out), [harness.to_numpy(g) for g in grads]
    if mode == "eager":
        out = [None]

        def fn():
            total, out[0] = value()
            return total

        _, grads = harness.gradients(fn, variables)
        return harness.to_numpy(out[0]), [harness.to_numpy(g) for g in grads]
    if harness.BACKEND == "tensorflow":
        import tensorflow as tf

        @tf.function(jit_compile=True)
        def compiled():
            with tf.GradientTape() as tape:
                total, out = value()
            return out, tape.gradient(total, [x.value for x in variables])

        out, grads = compiled()
    else:
        pytest.skip("Keras on torch runs eagerly: no XLA compilation to check (the eager cases run)")
    return harness.to_numpy(out), [harness.to_numpy(g) for g in grads]


def _inputs(rng, batch, t, s, heads, kv_heads, depth, dtype="float32"):
    q = rng.normal(size=(batch, t, heads, depth)).astype(dtype)
    k = rng.normal(size=(batch, s, kv_heads, depth)).astype(dtype)
    v = rng.normal(size=(batch, s, kv_heads, depth + 1)).astype(dtype)
    up = rng.normal(size=(batch, t, heads, depth + 1)).astype("float32")
    return q, k, v, up


@st.composite
def cases(draw):
    t = draw(st.integers(1, 13))
    s = draw(st.integers(1, 13))
    kv_heads = draw(st.sampled_from([1, 2]))
    heads = kv_heads * draw(st.sampled_from([1, 2]))
    kwargs = {}
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    if draw(st.booleans()):
        key_mask = rng.random((2, s)) > 0.3
        if draw(st.booleans()):  # right padding, the case blocks skip
            key_mask = np.arange(s)[None] < rng.integers(0, s + 1, size=(2, 1))
        kwargs["key_mask"] = key_mask
    if draw(st.booleans()):
        shape = draw(st.sampled_from([(t, s), (2, 1, t, s), (2, heads, t, s), (1, heads, 1, s)]))
        kwargs["mask"] = rng.random(shape) > 0.25
    kwargs["is_causal"] = draw(st.booleans())
    if draw(st.booleans()):
        kwargs["sliding_window"] = draw(st.integers(1, 6))
    if draw(st.booleans()):
        kwargs["distance_penalty"] = draw(st.sampled_from([0.1, 1.0]))
    if draw(st.booleans()):
        kwargs["query_offset"] = draw(st.integers(0, max(0, s - t) + 2))
    return rng, (t, s, heads, kv_heads), kwargs


@settings(max_examples=40, deadline=None)
@given(cases(), st.sampled_from([None, "blocks"]), st.integers(1, 5))
def test_outputs_and_gradients_equal_the_reference(case, budget, block):
    rng, (t, s, heads, kv_heads), kwargs = case
    q, k, v, up = _inputs(rng, 2, t, s, heads, kv_heads, 4)
    # A budget below one score forces blocks of `block` queries and keys.
    options = dict(scores_budget_mb=1e-9, block_size=block) if budget else dict(scores_budget_mb=None)
    out, grads = _run(q, k, v, up, **kwargs, **options)
    expected, _, expected_grads = reference(q, k, v, up, **kwargs)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    for got, want in zip(grads, expected_grads):
        np.testing.assert_allclose(got, want, atol=1e-5)


@settings(max_examples=20, deadline=None)
@given(
    st.integers(1, 24), st.integers(2, 7), st.sampled_from([1, 2]),
    st.sampled_from([None, "random", "left", "right"]), st.sampled_from([0.0, 0.3]),
    st.integers(0, 2**16),
)
def test_causal_self_attention_in_rectangles_and_leaves(t, block, groups, key_mask, penalty, seed):
    """Causal self-attention over blocks (`_blockwise.causal_attention`:
    the sequence padded to a power-of-two count of blocks, unbanded
    rectangles merged with causal diagonal blocks) against the reference,
    with padding anywhere, left padding (queries that see no key) included."""
    rng = np.random.default_rng(seed)
    q, k, v, up = _inputs(rng, 2, t, t, 2 * groups, 2, 4)
    kwargs = dict(is_causal=True, distance_penalty=penalty)
    if key_mask == "random":
        kwargs["key_mask"] = rng.random((2, t)) > 0.3
    elif key_mask:
        cut = rng.integers(0, t + 1, size=(2, 1))
        steps = np.arange(t)[None]
        kwargs["key_mask"] = steps >= cut if key_mask == "left" else steps < cut
    # On JAX under `jax.jit`: eagerly, each of its loops compiles per call.
    mode = "compiled" if harness.BACKEND == "jax" else "eager"
    out, grads = _run(q, k, v, up, mode=mode, scores_budget_mb=1e-9, block_size=block, **kwargs)
    expected, _, expected_grads = reference(q, k, v, up, **kwargs)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    for got, want in zip(grads, expected_grads):
        np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("kwargs", [
    {},
    {"is_causal": True, "key_mask": np.arange(11)[None] < np.array([[11], [6]])},
    {"sliding_window": 3, "is_causal": True, "distance_penalty": 0.2},
    {"sliding_window": 4, "mask": np.tri(9, 11, 2, dtype=bool)},
    {"is_causal": True, "query_offset": 2},
    {"is_causal": True, "distance_penalty": 0.2, "self": True},
])
def test_compiled_equals_the_reference(kwargs):
    rng = np.random.default_rng(3)
    kwargs = dict(kwargs)
    q, k, v, up = _inputs(rng, 2, 11 if kwargs.pop("self", False) else 9, 11, 4, 2, 4)
    for options in (dict(scores_budget_mb=None), dict(scores_budget_mb=1e-9, block_size=3)):
        out, grads = _run(q, k, v, up, mode="compiled", **kwargs, **options)
        expected, _, expected_grads = reference(q, k, v, up, **kwargs)
        np.testing.assert_allclose(out, expected, atol=1e-5)
        for got, want in zip(grads, expected_grads):
            np.testing.assert_allclose(got, want, atol=1e-5)


def test_unblocked_sizes_pick_the_blocks_from_the_budget():
    """Without causal order or a window, blocks follow the budget: queries
    in forward blocks against every key, every query against key blocks in
    the backward pass."""
    rng = np.random.default_rng(4)
    q, k, v, up = _inputs(rng, 1, 37, 29, 2, 2, 4)
    budget = 2 * 29 * 4 * 8 / 2**20  # 8 query rows against 29 keys
    out, grads = _run(q, k, v, up, scores_budget_mb=budget)
    expected, _, expected_grads = reference(q, k, v, up)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    for got, want in zip(grads, expected_grads):
        np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("blockwise", [False, True])
def test_hidden_padding_and_empty_rows_give_zeros_not_nan(blockwise):
    rng = np.random.default_rng(5)
    q, k, v, up = _inputs(rng, 2, 6, 6, 2, 2, 4)
    key_mask = np.ones((2, 6), bool)
    key_mask[0, 3:] = False
    key_mask[1] = False  # a batch row with no key at all
    k[0, 3:] = np.nan
    v[0, 3:] = np.inf
    options = dict(scores_budget_mb=1e-9, block_size=2) if blockwise else {}
    out, grads = _run(q, k, v, up, key_mask=key_mask, is_causal=True, **options)
    assert np.isfinite(out).all() and all(np.isfinite(g).all() for g in grads)
    np.testing.assert_array_equal(out[1], 0.0)
    np.testing.assert_array_equal(grads[0][1], 0.0)
    np.testing.assert_array_equal(grads[1][0, 3:], 0.0)
    expected, _, _ = reference(q, np.nan_to_num(k), np.nan_to_num(v, posinf=0), up,
                               key_mask=key_mask, is_causal=True)
    np.testing.assert_allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("blockwise", [False, True])
def test_half_precision_keeps_float32_statistics(dtype, blockwise):
    if harness.BACKEND == "jax" and dtype == "float16":
        pytest.skip("XLA on a CPU has no float16 dot with float32 accumulation")
    rng = np.random.default_rng(6)
    q, k, v, up = _inputs(rng, 1, 10, 10, 2, 1, 8)
    q *= 30.0  # logits far beyond float16's exp range
    options = dict(scores_budget_mb=1e-9, block_size=4) if blockwise else {}
    cast = [keras.ops.cast(x, dtype) for x in (q, k, v)]
    out = harness.to_numpy(keras.ops.cast(
        kaq_ops.attention(*cast, is_causal=True, **options), "float32"
    ))
    assert np.isfinite(out).all()
    expected, _, _ = reference(*[harness.to_numpy(keras.ops.cast(x, "float32")) for x in cast],
                               up, is_causal=True)
    np.testing.assert_allclose(out, expected, atol=0.05 * np.abs(expected).max())


def test_weights_and_dropout_take_the_full_path():
    rng = np.random.default_rng(7)
    q, k, v, _ = _inputs(rng, 2, 5, 7, 2, 1, 4)
    key_mask = np.arange(7)[None] < np.array([[7], [3]])
    out, weights = kaq_ops.attention(q, k, v, key_mask=key_mask, return_weights=True,
                                     scores_budget_mb=1e-9)
    expected, expected_weights, _ = reference(q, k, v, np.zeros((2, 5, 2, 5)), key_mask=key_mask)
    np.testing.assert_allclose(harness.to_numpy(out), expected, atol=1e-5)
    np.testing.assert_allclose(harness.to_numpy(weights), expected_weights, atol=1e-6)
    dropped = harness.to_numpy(kaq_ops.attention(q, k, v, dropout=0.5, seed=1))
    assert dropped.shape == (2, 5, 2, 5) and np.isfinite(dropped).all()


def _pairs_needed(t, s, rows, cols, causal, window, offset, key_end):
    """Block pairs with at least one entry that causal order, the window
    and right padding leave visible."""
    i, j = np.arange(t)[:, None] + offset, np.arange(s)[None, :]
    visible = np.broadcast_to(j < key_end, (t, s)).copy()
    if causal:
        visible &= j <= i
    if window:
        visible &= np.abs(i - j) < window
    blocks = visible.reshape(-(-t // rows), rows, -(-s // cols), cols) if (
        t % rows == 0 and s % cols == 0) else None
    assert blocks is not None
    return int(blocks.any(axis=(1, 3)).sum())


@pytest.mark.parametrize("causal,window,offset,key_end", [
    (True, None, 0, 64),
    (True, 8, 0, 64),
    (False, 8, 0, 64),
    (True, None, 16, 64),
    (False, None, 0, 40),
    (True, 12, 0, 40),
])
def test_only_visible_blocks_are_computed(monkeypatch, causal, window, offset, key_end):
    """Counts the block pairs whose scores are computed, forward and
    backward, against the pairs the masks leave something visible in."""
    if harness.BACKEND == "jax":
        pytest.skip("JAX traces a loop's body once, so calls count traces, not "
                    "blocks; the ranges are the same keras.ops code counted on "
                    "TensorFlow and torch")
    calls = []
    real = _blockwise.Problem.logits

    def counting(self, q, k, i, j):
        calls.append((q.shape[0], self.rows, self.cols))
        return real(self, q, k, i, j)

    monkeypatch.setattr(_blockwise.Problem, "logits", counting)
    rng = np.random.default_rng(8)
    t, s, block = 48 if offset else 64, 64, 8
    q, k, v, up = _inputs(rng, 1, t, s, 2, 2, 4)
    key_mask = np.arange(s)[None] < key_end
    kwargs = dict(is_causal=causal, sliding_window=window, key_mask=key_mask,
                  query_offset=offset or None)
    out, grads = _run(q, k, v, up, scores_budget_mb=1e-9, block_size=block, **kwargs)
    expected, _, expected_grads = reference(q, k, v, up, **kwargs)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    np.testing.assert_allclose(grads[1], expected_grads[1], atol=1e-5)
    needed = _pairs_needed(t, s, block, block, causal, window, offset, key_end)
    if causal and not (window or offset):
        # Causal self-attention: causal diagonal blocks (one per block of
        # queries: forward, then the gradient's two passes) and rectangles
        # of keys every query of which sees, with the other block pairs
        # folded into the batch (forward, then the one-pass gradient).
        leaves = [c for c in calls if c == (1, block, block)]
        rectangles = sum(b * r * c for b, r, c in calls if (b, r, c) != (1, block, block))
        assert len(leaves) == 3 * (t // block)
        assert rectangles == 2 * (needed - t // block) * block * block
    elif causal or window:
        # Forward, then the key-block and the query-block passes of the
        # gradient: each computes the needed pairs once.
        assert len(calls) == 3 * needed, (len(calls), needed)
        assert needed < (t // block) * (s // block)
    else:
        # Without a band, blocks are whole rows or columns: the forward pass
        # computes every query block against all keys, the backward pass
        # the key blocks up to the last valid key against all queries.
        forward = [c for c in calls if c[2] == s]
        backward = [c for c in calls if c[1] == t]
        assert len(forward) + len(backward) == len(calls)
        assert sum(c[2] for c in backward) == -(-key_end // backward[0][2]) * backward[0][2]


def test_a_loop_over_blocks_starts_once_its_carry_is_ready():
    """The banded gradient runs its dQ loop after the dK/dV loop
    (`_xla.after` on the loop's carry), so that the two loops' blocks are
    not held at once. In a TensorFlow graph a loop's body runs as soon as
    its counter is ready: the counter must wait for the carry too."""
    if harness.BACKEND != "tensorflow":
        pytest.skip("orders ops in a TensorFlow graph; elsewhere `after` is a no-op")
    import tensorflow as tf

    from keras_addons_qa import _xla

    @tf.function
    def scan(x):
        done = tf.reduce_sum(x)
        start = _xla.after((tf.zeros((), tf.int32),), done)

        def step(carry, i):
            return carry, (x * tf.cast(i, x.dtype),)

        return _xla.serial_scan(step, start, 3, ("float32",))[1][0]

    x = tf.constant([1.0, 2.0])
    np.testing.assert_allclose(scan(x), [[0, 0], [1, 2], [2, 4]])
    graph = scan.get_concrete_function(x).graph
    (loop,) = [op for op in graph.get_operations() if op.type in ("While", "StatelessWhile")]
    (done,) = [op for op in graph.get_operations() if op.type == "Sum"]
    (counter,) = [t.op for t in loop.inputs if t.op.name.endswith("serial_scan_start")]
    ancestors, todo = set(), [counter]
    while todo:
        op = todo.pop()
        if op not in ancestors:
            ancestors.add(op)
            todo += [t.op for t in op.inputs] + list(op.control_inputs)
    assert done in ancestors


@pytest.mark.parametrize("bad,match", [
    (dict(query=np.zeros((2, 3, 4))), "batch, steps, heads, head_dim"),
    (dict(key=np.zeros((2, 5, 3, 4))), "divide"),
    (dict(key_mask=np.ones((2, 4), bool)), "key_mask"),
    (dict(mask=np.ones((2, 3, 3, 5), bool)), "mask"),
    (dict(sliding_window=0), "sliding_window"),
    (dict(distance_penalty=-1.0), "distance_penalty"),
])
def test_bad_arguments_raise(bad, match):
    args = dict(query=np.zeros((2, 3, 4, 4), "float32"), key=np.zeros((2, 5, 2, 4), "float32"),
                value=np.zeros((2, 5, 2, 4), "float32"))
    args.update({k: v for k, v in bad.items() if k in args})
    kwargs = {k: v for k, v in bad.items() if k not in args}
    with pytest.raises(ValueError, match=match):
        kaq_ops.attention(args["query"].astype("float32"), args["key"].astype("float32"),
                          args["value"].astype("float32"), **kwargs)


@pytest.mark.parametrize("causal", [False, True])
def test_the_backend_kernel_hand_off_equals_the_own_path(causal, monkeypatch):
    """On torch, `scaled_dot_product_attention` takes calls with no mask but
    a key mask and causal order; a general all-True mask keeps the call on
    the package's own path. Both equal the reference in values and
    gradients, padding holding NaN and inf reaches nothing, and a query that
    sees no key gets zeros (on other backends both calls take the own
    path)."""
    rng = np.random.default_rng(9)
    q, k, v, up = _inputs(rng, 3, 7, 7, 4, 2, 4)
    v = v[..., :4].copy()  # equal key and value head sizes, as the kernel needs
    up = up[..., :4].copy()
    key_mask = np.ones((3, 7), bool)
    key_mask[0, 5:] = False  # right padding
    key_mask[1, :3] = False  # left padding: causal queries 0-2 see no key
    key_mask[2] = False  # no key at all
    expected, _, expected_grads = reference(q, k, v, up, is_causal=causal, key_mask=key_mask)
    clean = k.copy(), v.copy()
    k[~key_mask], v[~key_mask] = np.nan, np.inf
    handed = []
    fused = keras.ops.dot_product_attention
    monkeypatch.setattr(keras.ops, "dot_product_attention",
                        lambda *a, **kw: handed.append(1) or fused(*a, **kw))
    for mask in (None, np.ones((7, 7), bool)):
        handed.clear()
        out, grads = _run(q, k, v, up, is_causal=causal, key_mask=key_mask, mask=mask)
        assert len(handed) == (harness.BACKEND == "torch" and mask is None)
        np.testing.assert_allclose(out, expected, atol=1e-5)
        for got, want in zip(grads, expected_grads):
            np.testing.assert_allclose(got, want, atol=1e-5)
    expected, _, expected_grads = reference(q, clean[0], clean[1], up, is_causal=causal)
    handed.clear()
    out, grads = _run(q, *clean, up, is_causal=causal)  # no mask at all
    assert len(handed) == (harness.BACKEND == "torch")
    np.testing.assert_allclose(out, expected, atol=1e-5)
    for got, want in zip(grads, expected_grads):
        np.testing.assert_allclose(got, want, atol=1e-5)
