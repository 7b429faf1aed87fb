"""JAX-only fast path for padded attention (the package's one backend module).

On GPUs, cuDNN's fused (flash) attention refuses an arbitrary boolean mask,
but accepts padding given as sequence lengths. Padding masks from Keras
(`Embedding(mask_zero=True)`, `Masking`, right-padded batches) are almost
always right-padded, so this module turns a key mask into lengths when, and
only when, the mask *is* right-padded: the check runs on the device, and
`lax.cond` picks the length-based kernel or the general boolean-mask path,
so the result always has the exact semantics of the mask.

`QKVAttention` calls `padded_attention` only on the JAX backend with a GPU,
and uses `keras.ops.dot_product_attention` everywhere else.
"""

import jax
import jax.numpy as jnp

_CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)


def on_gpu():
    try:
        return jax.default_backend() == "gpu"
    except RuntimeError:  # no backend initialised
        return False


def _attention(q, k, v, scale, is_causal, lengths=None, mask=None):
    kwargs = dict(scale=scale, is_causal=is_causal)
    if lengths is not None and on_gpu() and q.dtype in _CUDNN_DTYPES:
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
    steps = key_valid.shape[1]
    lengths = jnp.sum(key_valid, axis=1, dtype=jnp.int32)
    right_padded = jnp.all(
        key_valid == (jnp.arange(steps)[None, :] < lengths[:, None])
    )
    # An empty row would be 0/0 inside the kernel; give it one (zeroed) key
    # instead: the caller discards its context.
    safe_lengths = jnp.maximum(lengths, 1)
    mask = key_valid[:, None, None, :]
    return jax.lax.cond(
        right_padded,
        lambda: _attention(q, k, v, scale, is_causal, lengths=safe_lengths),
        lambda: _attention(q, k, v, scale, is_causal, mask=mask),
    )
