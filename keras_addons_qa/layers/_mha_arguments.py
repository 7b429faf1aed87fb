"""MultiHeadAttention's constructor and call arguments, read and checked
for `QKVAttention`.

The layer takes MultiHeadAttention's own signature, so every argument it
has (and any it gains) means the same there. Arguments newer than the
oldest supported Keras (`use_gate`: Keras 3.14, `sliding_window`: 3.15)
are `PROVIDED` by the layer where the installed MultiHeadAttention lacks
them, with the same meaning, config entry and weights.
"""

import inspect
import numbers

import keras

from keras_addons_qa import _checks
from keras_addons_qa.layers import _attention_axes
from keras_addons_qa.layers import _kv_cache

_MultiHeadAttention = keras.layers.MultiHeadAttention

PROVIDED = {
    name: default
    for name, default in (("use_gate", False), ("sliding_window", None))
    if name not in inspect.signature(_MultiHeadAttention.__init__).parameters
}


def bind(args, kwargs, output_dim):
    """`(arguments, provided)`: MultiHeadAttention's arguments bound from
    `args` and `kwargs` and checked, and the `PROVIDED` ones. `output_dim`
    is 0.1.0's name for an int `output_shape`."""
    provided = {name: kwargs.pop(name, default) for name, default in PROVIDED.items()}
    try:
        arguments = inspect.signature(_MultiHeadAttention.__init__).bind(
            None, *args, **kwargs
        ).arguments
    except TypeError as error:  # a missing or unknown argument
        raise TypeError(f"QKVAttention: {error}") from None
    arguments.pop("self")
    arguments.update(arguments.pop("kwargs", {}))
    for name in ("num_heads", "key_dim", "value_dim"):
        arguments[name] = _as_int(name, arguments.get(name))
    _check_output_shape(arguments.get("output_shape"))
    if output_dim is not None:
        output_dim = _checks.integer_at_least("output_dim", output_dim, 1)
        given = arguments.get("output_shape")
        if given not in (None, output_dim, (output_dim,), [output_dim]):
            raise ValueError(
                "`output_dim` is another name for an int `output_shape`; "
                f"give one of them. Received: output_dim={output_dim}, "
                f"output_shape={given!r}"
            )
        arguments["output_shape"] = output_dim
    # A NumPy int is an int; True is not (Keras's own check reads both the
    # other way).
    for given in (arguments, provided):
        if given.get("sliding_window") is not None:
            given["sliding_window"] = _checks.integer_at_least(
                "sliding_window", given["sliding_window"], 1
            )
    dropout = arguments.get("dropout", 0.0)
    if _checks.non_negative_float("dropout", dropout) >= 1.0:
        raise ValueError(
            f"Argument `dropout` must be in [0, 1). Received: dropout={dropout!r}"
        )
    return arguments, provided


def _as_int(name, value):
    """`value` as a Python int (NumPy integers included), checked in
    MultiHeadAttention's words: a positive integer (`value_dim` may be
    None). Older MultiHeadAttention (Keras 3.10) checks none of them."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = int(value)
        if value > 0:
            return value
    elif value is None and name == "value_dim":
        return value
    expected = "a positive integer or `None`" if name == "value_dim" else "a positive integer"
    raise ValueError(
        f"Received an invalid value for argument `{name}`, expected "
        f"{expected}. Received: {name}={value}"
    )


def _check_output_shape(output_shape):
    """MultiHeadAttention treats a falsy `output_shape` (0, ()) as None and
    accepts negative sizes; those raise here."""
    if output_shape is None:
        return
    sizes = (output_shape,) if isinstance(output_shape, numbers.Number) else output_shape
    try:
        sizes = tuple(sizes)
    except TypeError:
        sizes = ()
    if not sizes or not all(
        isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 1
        for s in sizes
    ):
        raise ValueError(
            f"Invalid `output_shape`: {output_shape!r}. When specified, the "
            "`output_shape` should be a positive int or a non-empty tuple or "
            f"list of them. Received: output_shape={output_shape!r}"
        )


def check_call(layer, query, value, key, masks, attention_mask, use_causal_mask,
               cache, cache_update_index):
    """Checks a call's inputs against the built `layer`: the ranks it was
    built for, the cache, the masks' shapes (`masks`: the query's, the
    value's and the key's), and what needs a single attention axis."""
    rank = getattr(layer, "_qkv_rank", None)
    for name, tensor in (("query", query), ("value", value), ("key", key)):
        if rank is not None and len(tensor.shape) != rank:
            raise ValueError(
                f"QKVAttention was built for `{name}` of rank {rank}. "
                f"Received: {name}.shape={tuple(tensor.shape)}"
            )
    steps = (
        _checks.static_shape(query.shape[:-1]),
        _checks.static_shape(value.shape[:-1]),
    )
    if cache is not None or cache_update_index is not None:
        _kv_cache.check(query, cache, cache_update_index, layer.num_key_value_heads,
                        layer._key_dim, layer._value_dim)
    for name, mask, shape in zip(("query_mask", "value_mask", "key_mask"), masks,
                                 (steps[0], steps[1], steps[1])):
        if mask is not None:
            _checks.check_shape(name, mask.shape, shape)
    axes = layer._attention_axes  # resolved by build
    if (use_causal_mask or layer._sliding_window) and len(axes) != 1:
        raise ValueError(
            "`use_causal_mask` and `sliding_window` need attention over a "
            f"single axis. Received: attention_axes={axes} for "
            f"query.shape={tuple(query.shape)}"
        )
    if attention_mask is not None:
        _attention_axes.check_attention_mask(
            attention_mask.shape,
            steps if cache is None else (steps[0], (steps[1][0], cache.shape[2])),
            axes, layer._num_heads,
        )
