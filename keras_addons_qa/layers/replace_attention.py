"""`replace_attention`: a built model's attention layers become
`QKVAttention`, in place."""

import keras

from keras_addons_qa import _compat
from keras_addons_qa.layers.qkv_attention import QKVAttention

# Compiled functions a model caches (Keras's, and KerasHub's `generate`):
# dropped, so the next call traces the new layers.
_CACHED_FUNCTIONS = ("train_function", "test_function", "predict_function", "generate_function")


def replace_attention(model, classes=(), **kwargs):
    """Swaps every `MultiHeadAttention` a built model holds for a `QKVAttention`.

    Each `keras.layers.MultiHeadAttention` and KerasHub
    `CachedMultiHeadAttention` (whose cache `QKVAttention` follows) that a
    layer of `model` holds as an attribute becomes
    `QKVAttention.from_multi_head_attention(layer, **kwargs)` in the same
    place: the same name, variables with the same
    paths and in the same order, the same weights. That is how KerasHub's
    blocks (`TransformerDecoder`, `TransformerEncoder`) and subclassed
    models hold their attention. A layer shared by several holders is
    converted once; a `QKVAttention` stays as it is. Another subclass of
    `MultiHeadAttention` may compute something else with the same weights
    (a relative-position bias, say), so it raises unless `classes` names
    it. The model's cached compiled functions are dropped;
    compile again after it if the model was compiled (the optimizer's
    state belongs to the old variables).

    A `.keras` file saved afterwards holds the same weights under the same
    paths. KerasHub's blocks create their attention in `build` and name no
    attention class in their config, so such a model loads with its
    original attention class and these weights: call `replace_attention`
    again after loading.

    Args:
        model: A built Keras model or layer.
        classes: Further `MultiHeadAttention` subclasses to convert, whose
            layers compute what MultiHeadAttention computes.
        **kwargs: `QKVAttention` arguments for every converted layer (e.g.
            `scores_budget_mb=32`); not `position_encoding`, which would
            also apply to cross-attention: set it on chosen layers.

    Returns:
        The new `QKVAttention` layers, in the order they were found.

    Raises:
        ValueError: If `model` is not built, holds no `MultiHeadAttention`
            to convert, holds a subclass `classes` does not name, holds one in a list or dict (a `.keras` file names
            those by class: the swapped model would not load back), or holds
            one as a node of a functional graph (`keras.Model(inputs,
            outputs)` over an attention layer's call, an attribute holding
            it too): such a layer is part of the graph; rebuild the graph with
            `keras.models.clone_model(model, clone_function=f)`, `f`
            returning `QKVAttention.from_multi_head_attention(layer)` for
            attention layers and `layer` otherwise.

    Example:

    >>> import numpy as np
    >>> class Block(keras.layers.Layer):
    ...     def __init__(self, **kwargs):
    ...         super().__init__(**kwargs)
    ...         self.attention = keras.layers.MultiHeadAttention(2, 4)
    ...     def call(self, x):
    ...         return self.attention(x, x)
    >>> inputs = keras.Input((5, 8))
    >>> model = keras.Model(inputs, Block()(inputs))
    >>> x = np.random.rand(2, 5, 8).astype("float32")
    >>> before = model.predict(x, verbose=0)
    >>> [type(layer).__name__ for layer in replace_attention(model)]
    ['QKVAttention']
    >>> bool(np.allclose(model.predict(x, verbose=0), before, atol=1e-6))
    True
    """
    if "position_encoding" in kwargs:
        raise ValueError(
            "`replace_attention` does not take `position_encoding`: it would "
            "also apply to cross-attention. Set it on the layers it is for. "
            f"Received: position_encoding={kwargs['position_encoding']!r}"
        )
    if not model.built:
        raise ValueError(
            f"`model` must be built (called once) so its attention layers have "
            f"weights. Received: model={model.name!r} (not built)"
        )
    classes = (classes,) if isinstance(classes, type) else tuple(classes)
    if not all(isinstance(c, type) and issubclass(c, keras.layers.MultiHeadAttention)
               for c in classes):
        raise ValueError(
            "`classes` must be MultiHeadAttention subclasses. "
            f"Received: classes={classes!r}"
        )
    # Everything is checked and converted before the model is touched: an
    # error leaves it as it was.
    converted, swaps, visited = {}, [], _layers_of(model)
    for parent in visited:
        graph = {id(op) for op in parent.operations} if isinstance(parent, keras.Function) else set()
        for child in _compat.sublayers(parent):
            if not _convertible(child, classes):
                continue
            attributes, contained = _holders(parent, child)
            if contained:
                raise ValueError(
                    f"`{child.name}` ({type(child).__name__}) is held in a list "
                    f"or dict of `{parent.name}`: a `.keras` file names such layers "
                    "by their class, so the swapped model would not load back. Hold "
                    "it as an attribute, or build the model with `QKVAttention`."
                )
            if id(child) in graph:  # the graph calls it, attribute or not
                raise ValueError(
                    f"`{child.name}` ({type(child).__name__}) is a node of the "
                    f"functional graph of `{parent.name}`: rebuild the graph "
                    "with `keras.models.clone_model(model, clone_function=f)`, "
                    "`f` returning `QKVAttention.from_multi_head_attention(layer)` "
                    "for it."
                )
            if not attributes:
                raise ValueError(
                    f"`{child.name}` ({type(child).__name__}) is not an attribute "
                    f"of `{parent.name}`, so `replace_attention` cannot point "
                    "its holder at the new layer. Hold it as an attribute, or "
                    "build the model with `QKVAttention`."
                )
            if id(child) not in converted:  # a shared layer is converted once
                converted[id(child)] = QKVAttention.from_multi_head_attention(child, **kwargs)
            swaps.append((parent, child, attributes))
    if not converted:
        raise ValueError(
            "`model` holds no `keras.layers.MultiHeadAttention` to convert. "
            f"Received: model={model.name!r}"
        )
    for parent, child, attributes in swaps:
        new = converted[id(child)]
        _compat.swap_sublayer(parent, child, new)  # first: tracking then finds it
        for name in attributes:
            setattr(parent, name, new)
    for layer in visited:
        _compat.refresh_torch_parameters(layer)
        for name in _CACHED_FUNCTIONS:
            if getattr(layer, name, None) is not None:
                setattr(layer, name, None)
    return list(converted.values())


def _convertible(layer, classes=()):
    """Whether to convert `layer`; raises for a MultiHeadAttention subclass
    not known to compute what MultiHeadAttention computes."""
    kind = type(layer)
    if not isinstance(layer, keras.layers.MultiHeadAttention) or isinstance(layer, QKVAttention):
        return False
    if kind is keras.layers.MultiHeadAttention or issubclass(kind, classes):
        return True
    if kind.__name__ == "CachedMultiHeadAttention" and kind.__module__.startswith("keras_hub."):
        return True
    raise ValueError(
        f"`{layer.name}` is a {kind.__name__}, a subclass of MultiHeadAttention "
        "that may compute something else with the same weights. If it computes "
        f"what MultiHeadAttention computes, pass `classes=({kind.__name__},)`. "
        f"Received: {layer.name!r} ({kind.__name__})"
    )


def _layers_of(model):
    """`model` and every layer below it, parents before children, once
    each; the attention layers being replaced are not descended into."""
    seen, order, pending = set(), [], [model]
    while pending:
        layer = pending.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        order.append(layer)
        pending.extend(
            child for child in reversed(_compat.sublayers(layer))
            if not isinstance(child, keras.layers.MultiHeadAttention)
        )
    return order


def _holders(parent, layer):
    """The attributes of `parent` that hold `layer`, and whether a list or
    dict attribute holds it."""
    names = _compat.attribute_names(parent) - set(_compat.BOOKKEEPING_ATTRIBUTES)
    attributes, contained = [], False
    for name in sorted(names):
        value = getattr(parent, name)
        if value is layer:
            attributes.append(name)
        elif isinstance(value, (list, tuple)):
            contained |= any(item is layer for item in value)
        elif isinstance(value, dict):
            contained |= any(item is layer for item in value.values())
    return attributes, contained
