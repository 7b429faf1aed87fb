"""JAX-only fast path for padded attention (the package's one backend module).

On GPUs, cuDNN's fused (flash) attention refuses an arbitrary boolean mask,
but accepts padding given as sequence lengths. Without causality, attention
does not depend on the order of the keys: a softmax over keys and a weighted
sum of values are both sums over keys. So any key mask becomes lengths by
moving each row's valid keys to the front (a stable reorder of `k` and `v`);
the result has the exact semantics of the mask, with no branch and no
`(B, T, S)` tensor. For right-padded masks the reorder is the identity.

With causality, key positions matter and nothing is reordered: a right-
padded mask (checked on the device) goes to the length-based kernel, any
other to the boolean-mask kernel, through `lax.cond`.

It earns >= 10% on `benchmarks/gpu.py`'s attention case over the
boolean-mask kernel (figures in `docs/benchmarks.md`, GPU section).
`ops.attention` calls `padded_attention` only on the JAX backend with a GPU,
for float16 / bfloat16 attention with no mask but the key mask.
"""

import jax
import jax.numpy as jnp

CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)


def on_gpu():
    try:
        return jax.default_backend() == "gpu"
    except RuntimeError:  # no backend initialised
        return False


def _attention(q, k, v, scale, is_causal, lengths=None, mask=None):
    kwargs = dict(scale=scale, is_causal=is_causal)
    if lengths is not None and on_gpu() and q.dtype in CUDNN_DTYPES:
        try:
            return jax.nn.dot_product_attention(
                q, k, v, key_value_seq_lengths=lengths,
                implementation="cudnn", **kwargs,
            )
        except (NotImplementedError, ValueError, RuntimeError):
            pass  # shape or head size cuDNN does not take: XLA below
    if lengths is not None:
        return jax.nn.dot_product_attention(
            q, k, v, key_value_seq_lengths=lengths, **kwargs
        )
    return jax.nn.dot_product_attention(q, k, v, mask=mask, **kwargs)


def _reorder_steps(x, order):
    """`x[b, order[b, j]]` along axis 1, for a permutation `order`."""
    return jnp.take_along_axis(x, order[:, :, None, None], axis=1)


def padded_attention(q, k, v, key_valid, scale, is_causal):
    """Scaled dot-product attention with a key mask, exact for any mask.

    Args:
        q: `(B, T, N, H)` projected queries.
        k, v: `(B, S, N, H)` projected keys and values.
        key_valid: `(B, S)` bool or None; False keys get no weight.
        scale: Logit scale.
        is_causal: Whether query `i` may only see keys `j <= i`.

    Returns:
        `(B, T, N, H)` context. Rows of queries that see no key hold
        finite values of no meaning; the caller zeroes them.
    """
    if key_valid is None:
        return jax.nn.dot_product_attention(
            q, k, v, scale=scale, is_causal=is_causal
        )
    key_valid = key_valid.astype(bool)
    lengths = jnp.sum(key_valid, axis=1, dtype=jnp.int32)
    # An empty row would be 0/0 inside the kernel; give it one key (a
    # padding key, finite since the caller sanitized the inputs): the caller
    # discards its context.
    safe_lengths = jnp.maximum(lengths, 1)
    if not is_causal:
        # Valid keys first, each row in its own order (stable: a right-
        # padded row stays as it is).
        order = jnp.argsort(~key_valid, axis=1, stable=True)
        return _attention(
            q, _reorder_steps(k, order), _reorder_steps(v, order), scale,
            False, lengths=safe_lengths,
        )
    steps = key_valid.shape[1]
    right_padded = jnp.all(key_valid == (jnp.arange(steps)[None, :] < lengths[:, None]))
    # Rematerialized, the boolean-mask branch keeps only its inputs as
    # residuals; otherwise its (B, N, T, S) residuals ride through the
    # taken branch as zeros.
    fallback = jax.checkpoint(
        lambda q, k, v, mask: _attention(q, k, v, scale, True, mask=mask)
    )
    return jax.lax.cond(
        right_padded,
        lambda: _attention(q, k, v, scale, True, lengths=safe_lengths),
        lambda: fallback(q, k, v, key_valid[:, None, None, :]),
    )
