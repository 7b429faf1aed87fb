"""Argument validation shared by every public class (internal).

Each check raises `ValueError` naming the argument and the value received,
the way Keras's own layers do.
"""

import math
import numbers
import warnings

import numpy as np


def non_negative_float(name, value):
    """Returns `value` as a float; it must be finite and >= 0."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(
            f"Argument `{name}` must be a finite number >= 0. "
            f"Received: {name}={value!r}"
        )
    return float(value)


def positive_float(name, value):
    """Returns `value` as a float; it must be finite and > 0."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(
            f"Argument `{name}` must be a finite number > 0. "
            f"Received: {name}={value!r}"
        )
    return float(value)


def integer_at_least(name, value, minimum):
    """Returns `value` as an int; it must be an integer >= `minimum`."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or value < minimum
    ):
        raise ValueError(
            f"Argument `{name}` must be an integer >= {minimum}. "
            f"Received: {name}={value!r}"
        )
    return int(value)


def one_of(name, value, choices):
    """Returns `value`; it must be one of `choices`."""
    if value not in choices:
        raise ValueError(
            f"Argument `{name}` must be one of {sorted(choices)}. "
            f"Received: {name}={value!r}"
        )
    return value


def static_shape(shape):
    """`shape` as a tuple of Python ints, with None where a size is unknown.

    A size is unknown when it is None or not a Python int: under
    `torch.jit.trace` (torch's ONNX export) sizes are traced tensors, and
    comparing them would bake this trace's sizes into the exported graph.
    """
    return tuple(
        d if isinstance(d, int) and not isinstance(d, bool) else None
        for d in tuple(shape)
    )


def fixed_sizes(sizes):
    """Sizes a model's weights fix (head counts, head sizes) as Python ints.

    Torch's tracer (its ONNX export) hands every size over as a 0-d tensor
    and warns when one becomes an int, since a length read that way would
    not generalize. These sizes cannot change between calls, so they are
    read as constants, and the tracer's warning is silenced for them alone.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tuple(None if d is None else int(d) for d in sizes)


def check_shape(name, shape, expected):
    """Raises unless `shape` has `expected`'s rank and sizes where both are
    known (None = any)."""
    shape, expected = static_shape(shape), static_shape(expected)
    if len(shape) != len(expected) or any(
        s is not None and e is not None and s != e for s, e in zip(shape, expected)
    ):
        raise ValueError(
            f"`{name}` must have shape {expected} (None = any). "
            f"Received: {name}.shape={shape}"
        )


def check_mask_shape(mask_shape, input_shape, input_name="inputs"):
    """Raises if a mask's static shape is not a prefix of the input's.

    A Keras mask marks whole steps: for `inputs` of shape
    `(batch, time, features)` it is `(batch, time)`. Dimensions that are
    unknown at trace time (`None`) are not compared.
    """
    mask_shape = static_shape(mask_shape)
    input_shape = static_shape(input_shape)
    ok = len(mask_shape) <= len(input_shape) and all(
        m is None or i is None or m == i
        for m, i in zip(mask_shape, input_shape)
    )
    if not ok:
        raise ValueError(
            f"The mask must have the leading shape of `{input_name}` "
            f"{input_shape[: max(len(mask_shape), 1)]}. Received: "
            f"mask.shape={mask_shape}, {input_name}.shape={input_shape}"
        )


def known_value(x):
    """`x` as a NumPy array when its value is known now (eager code), else
    None (a graph, `jax.jit` or an export is being traced): for checks of
    call-time values, which only eager code can raise."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        from keras_addons_qa import _xla

        return _xla.eager_value(x)
    if backend == "jax":
        import jax

        return None if isinstance(x, jax.core.Tracer) else np.asarray(x)
    if backend == "torch":
        import torch

        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return None
    return keras.ops.convert_to_numpy(x)


def check_whole(prefix, name, x):
    """Raises (eager code) if `x` holds values that are not whole numbers:
    tags given as floats would be truncated where compiled code cannot
    raise. `prefix` names the caller."""
    known = known_value(x)
    if known is None:
        return
    fractions = known[known != np.floor(known)]
    if fractions.size:
        raise ValueError(
            f"{prefix}: `{name}` must be whole tags. Received: {name} values "
            f"{sorted(set(fractions.tolist()))[:10]}"
        )
