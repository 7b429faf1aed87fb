"""`QKVAttention` from another attention layer: the configuration, the
weights, and the variables' paths.

The converters read the projections by MultiHeadAttention's attribute
names (`_query_dense`, ...): Keras's `MultiHeadAttention` and
`GroupQueryAttention` and KerasHub's attention layers all hold them so
(checked on Keras 3.10-3.15 and KerasHub 0.32).
"""

import contextlib

import keras

# The projections every converter reads, by MultiHeadAttention's names.
PROJECTIONS = ("_query_dense", "_key_dense", "_value_dense", "_output_dense")
# What `from_grouped_query_attention` copies from attributes of these names.
CONVERTED_ATTRIBUTES = (
    "dropout", "seed", "use_gate", "sliding_window", "kernel_initializer",
    "bias_initializer", "kernel_regularizer", "bias_regularizer",
    "activity_regularizer", "kernel_constraint", "bias_constraint",
)


def from_multi_head_attention(cls, mha, kwargs):
    """`cls` with `mha`'s configuration and its weights, in the same order."""
    return _converted(cls, "mha", mha, mha.get_config(), kwargs)


def from_grouped_query_attention(cls, gqa, kwargs):
    """`cls` with the configuration read from `gqa`'s kernels and attributes,
    and its weights copied by role (see `QKVAttention`'s method)."""
    denses = [getattr(gqa, role, None) for role in PROJECTIONS]
    shapes = [
        tuple(d.kernel.shape) if isinstance(d, keras.layers.EinsumDense) and d.built
        else None for d in denses
    ]
    if any(shape is None or len(shape) != 3 for shape in shapes):
        raise ValueError(
            "`gqa` must be a built attention layer with `EinsumDense` "
            f"projections {', '.join(PROJECTIONS)} of 3-D kernels. "
            f"Received: gqa={gqa.name!r} ({type(gqa).__name__}), kernel shapes "
            f"{dict(zip(PROJECTIONS, shapes))}"
        )
    biased = {role: d.bias is not None for role, d in zip(PROJECTIONS, denses)}
    if len(set(biased.values())) != 1:
        raise ValueError(
            "`gqa` must have biases on all four projections or on none "
            "(QKVAttention's `use_bias` covers them together). Received: "
            f"gqa={gqa.name!r} ({type(gqa).__name__}), biases {biased}"
        )
    (features, heads, key_dim), (_, groups, _), (_, _, value_dim), output = shapes
    # Attributes, not `get_config()`: KerasHub's `LlamaAttention` 0.32
    # cannot serialize itself.
    config = {"name": gqa.name, "dtype": gqa.dtype_policy, "trainable": gqa.trainable}
    for attribute in CONVERTED_ATTRIBUTES:
        value = getattr(gqa, attribute, None)
        if value is not None:
            config[attribute] = keras.saving.serialize_keras_object(value)
    config.update(
        num_heads=heads, key_dim=key_dim, value_dim=value_dim,
        num_key_value_heads=groups, use_bias=biased["_query_dense"],
        output_shape=None if output[-1] == features else output[-1],
    )
    rotary = getattr(gqa, "rotary_embedding_layer", None)
    if isinstance(rotary, keras.layers.Layer):
        config["position_encoding"] = rotary  # shared: it holds no state
    return _converted(cls, "gqa", gqa, config, kwargs, by_role=True)


def _converted(cls, name, layer, config, kwargs, by_role=False):
    if not layer.built:
        raise ValueError(
            f"`{name}` must be built (called once) so its shapes are known. "
            f"Received: {name}={layer.name!r} (not built)"
        )
    converted = cls.from_config({**config, **kwargs})

    def shape(dense):  # the input shape an EinsumDense was built for
        rank = len(dense.equation.split(",")[0])
        return (None,) * (rank - 1) + (dense.kernel.shape[0],)

    # Built inside the scope the original was built in, so that its
    # variables keep their paths ("block/self_attention/query/kernel"):
    # a `LayoutMap` or a checkpoint that names them keeps finding them.
    path = layer._query_dense.kernel.path
    scope = path[: max(path.rfind(f"{layer.name}/"), 0)].rstrip("/")
    with keras.name_scope(scope) if scope else contextlib.nullcontext():
        converted.build(*(shape(getattr(layer, attribute)) for attribute in (
            "_query_dense", "_value_dense", "_key_dense"
        )))
    if not by_role:  # a MultiHeadAttention: the same variables in the same order
        converted.set_weights(layer.get_weights())
        return converted
    copied = set()
    for role in PROJECTIONS + ("_gate_dense",):
        if getattr(layer, role, None) is not None and getattr(converted, role, None) is not None:
            getattr(converted, role).set_weights(getattr(layer, role).get_weights())
            copied.update(id(v) for v in getattr(layer, role).weights)
    if converted.position_encoding is not None:  # shared, not copied
        copied.update(id(v) for v in converted.position_encoding.weights)
    dropped = [v.path for v in layer.weights if id(v) not in copied]
    if dropped:
        raise ValueError(
            f"`{name}` holds weights the conversion would drop (QKVAttention "
            "has the four projections, a gate and `position_encoding`). "
            f"Received: {name}={layer.name!r} ({type(layer).__name__}) with {dropped}"
        )
    return converted
