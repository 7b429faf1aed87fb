"""The numerical pieces several components share (internal).

Written once and tested once: masking that keeps padding out of outputs *and*
gradients, a softmax that gives zeros for rows with nothing to attend to, the
expected index of a distribution, and sharpening in log space. Everything here
computes in float32 (float64 inputs stay float64, see `widen`); callers cast
the result back to their compute dtype (`cast_to_compute_dtype` makes the
casts a layer's inputs and weights need on the way in).
"""

import keras
from keras import ops

# The most negative finite float32. Used instead of -inf or -1e9 as the
# "masked" logit: it never turns into NaN through `0 * -inf`, and it is only
# ever used in float32 (in float16, -1e9 is already -inf).
FLOAT32_MIN = -3.4028234663852886e38
# The smallest normal float32: the floor for probabilities before a log.
FLOAT32_TINY = 1.1754943508222875e-38


def custom_gradient(forward):
    """`keras.ops.custom_gradient` with one signature on every backend:
    `forward(*args)` returns `(value, grad)`, and `grad(upstream)` the
    gradients of the arguments. (Keras's torch backend passes the upstream
    gradient by the keyword `upstream`, TensorFlow and JAX by position.)"""

    @ops.custom_gradient
    def wrapped(*args):
        value, grad = forward(*args)

        def backend_grad(*given, upstream=None):
            return grad(given[0] if upstream is None else upstream)

        return value, backend_grad

    return wrapped


def batch_mean(total, x):
    """`total` (a sum over the batch of `x`) divided by `x`'s batch size,
    0 for an empty batch (not 0 / 0)."""
    batch = ops.cast(ops.shape(x)[0], total.dtype)
    return total / ops.maximum(batch, 1.0)


def widen(x):
    """Casts `x` to float32, or keeps float64: the precision we compute in.

    Softmax, penalties and losses never run in float16 / bfloat16 (their
    range and resolution are too small); float64 stays float64, so float64
    models (and finite-difference gradient checks) lose nothing.
    """
    if keras.backend.standardize_dtype(x.dtype) == "float64":
        return ops.cast(x, "float64")  # also turns a Variable into a tensor
    return ops.cast(x, "float32")


def cast_to_compute_dtype(layer, *tensors):
    """`tensors` cast to `layer.compute_dtype`; a None stays None.

    The casts a layer's `__call__` makes under mixed precision (inputs and
    weights to the compute dtype), for layers to make inside `call` as well:
    `stateless_call`, how JAX training steps call a layer, runs `call` with
    no autocast scope, and without them a mixed-precision step would compute
    its matrix products in float32.
    """
    dtype = layer.compute_dtype
    return tuple(None if t is None else ops.cast(t, dtype) for t in tensors)


def tanh(x):
    """`ops.tanh`, except that float64 stays float64 on every backend.

    On JAX, Keras 3.15's `ops.tanh` returns float32 for float64 inputs; the
    identity `tanh(x) = 2 sigmoid(2x) - 1` keeps the dtype there.
    """
    if keras.backend.standardize_dtype(x.dtype) == "float64":
        return 2.0 * ops.sigmoid(2.0 * x) - 1.0
    return ops.tanh(x)


def broadcast_mask(mask, ndim):
    """Returns a bool `mask` with trailing unit axes up to rank `ndim`."""
    mask = ops.cast(mask, "bool")
    for _ in range(ndim - len(mask.shape)):
        mask = ops.expand_dims(mask, -1)
    return mask


def sanitize(x, mask):
    """Replaces masked entries of `x` by zeros, for values and gradients.

    `ops.where` picks values, and its gradient is zero for the unpicked
    branch, so whatever padding holds (inf, NaN) reaches neither the result
    nor any gradient downstream. `mask` may have fewer axes than `x`.
    """
    mask = broadcast_mask(mask, len(x.shape))
    return ops.where(mask, x, ops.zeros((), x.dtype))


def all_finite(x):
    """A bool scalar: True if `x` holds no inf or NaN.

    Read off the sums over the last axis (one pass over `x`, no temporary
    of its size). A sum that overflows answers False too, which a caller
    must treat as "maybe not finite".
    """
    return ops.all(ops.isfinite(ops.sum(x, axis=-1)))


def masked_softmax(logits, mask=None, axis=-1):
    """Softmax over the entries where `mask` is True, in float32.

    Masked entries get exactly 0, and a row with no True entry gets all
    zeros (not a uniform distribution over padding, and not NaN). Gradients
    are finite everywhere and exactly zero for masked entries, whatever the
    masked logits hold.

    Args:
        logits: float tensor of any dtype.
        mask: optional bool tensor broadcastable to `logits`.
        axis: the axis to normalize over.

    Returns:
        float32 tensor of the shape of `logits`.
    """
    logits = widen(logits)
    if mask is None:
        return ops.softmax(logits, axis=axis)
    mask = ops.cast(mask, "bool")
    # Masked logits become the most negative finite float32: whatever they
    # held is gone (the `where`'s gradient to them is 0), and in a row with
    # a real entry their exp(min - max) is exactly 0. A row with none is
    # uniform inside the softmax, and the outer `where` zeroes it; the
    # softmax's gradient there is 0, since its incoming gradient is.
    # Four kernels and their gradients, where an explicit max / exp / sum
    # takes about fifteen.
    visible = ops.where(mask, logits, FLOAT32_MIN)
    return ops.where(mask, ops.softmax(visible, axis=axis), 0.0)


def expected_index(probs):
    """`sum_i i * p_i` over the last axis, in float32 (differentiable)."""
    probs = widen(probs)
    index = ops.arange(probs.shape[-1], dtype=probs.dtype)
    return ops.sum(probs * index, axis=-1)


def safe_log(probs):
    """`log(p)` in float32 with `p` floored at the smallest normal float32.

    Probabilities of exactly 0 give a large finite negative number, not
    `-inf`, so neither the value nor the gradient is ever NaN.
    """
    probs = widen(probs)
    return ops.log(ops.maximum(probs, FLOAT32_TINY))


def sharpening_scale(power, iterations=1):
    """`power ** iterations` as a Python float, capped at the float32 max.

    `sharpen` multiplies shifted logits (all <= 0) by it: capped, the
    largest entry stays exactly 0 and the others may go to -inf, which the
    softmax turns into exact zeros; an inf scale would give `inf * 0 = NaN`.
    """
    try:
        scale = float(power) ** int(iterations)
    except OverflowError:
        scale = float("inf")
    return min(scale, -FLOAT32_MIN)


def sharpen(log_probs, power, iterations=1):
    """`normalize(p ** power)`, applied `iterations` times, from `log p`.

    Softmax ignores a constant shift, so each normalization of a power is
    absorbed by the next power: `iterations` steps equal one softmax of
    `power ** iterations * log p`. It is computed as
    `softmax(scale * (log p - max log p))`: no power of a probability is
    ever formed, so a power of 1000 is as finite as a power of 2, and the
    arguments of the softmax are all <= 0 whatever the scale.
    """
    log_probs = widen(log_probs)
    top = ops.stop_gradient(ops.max(log_probs, axis=-1, keepdims=True))
    return ops.softmax(sharpening_scale(power, iterations) * (log_probs - top), axis=-1)
