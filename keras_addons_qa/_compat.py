"""The one place the package reaches into Keras internals (internal).

- Keras has no public API to attach a mask to a tensor a layer returns; its
  own `MultiHeadAttention` uses `keras.src.backend.set_keras_mask`. If a
  future Keras moves it, the fallback does nothing: the output then still
  carries the query's Keras mask through `Layer.compute_mask`, only an
  explicitly passed `query_mask` is not attached.
- Keras builds a layer without weights when it is created (its own
  `ActivityRegularization` does) through the private `Layer._build_at_init`,
  which Keras 3.10 added; before it, such layers set `built = True`.
- Keras has no public way to swap a sublayer of a built layer, which
  `replace_attention` and grouped-query heads need: the sublayers a layer
  tracks are `Layer._layers`, swapped in place by
  `Tracker.replace_tracked_value` (both Keras 3.10 to 3.15); on torch a
  layer's `torch.nn.Parameter`s are collected once, by
  `TorchLayer._track_variables`, and must be collected again, and its
  sublayers are attributes that `torch.nn.Module` keeps in `_modules`, not
  in the instance's `__dict__`.
- `QKVAttention` is a subclass of `MultiHeadAttention`, and reads and sets
  its state by MultiHeadAttention's private names, as its own methods and
  KerasHub's `CachedMultiHeadAttention` do (its call-argument checks, in
  `layers/_mha_arguments.py`, read them from the layer); the converters read
  the same names on the layers they convert. They are listed in
  `MULTI_HEAD_ATTENTION_STATE` (Keras 3.10 to 3.15; `_use_gate` from 3.14
  and `_sliding_window` from 3.15, which the layer sets itself on older
  Keras), and `tests/test_house_rules.py` fails on any other private Keras
  name used outside this module.
"""

try:  # pragma: no cover - depends on the installed Keras
    from keras.src.backend import set_keras_mask as _set_keras_mask
except ImportError:  # pragma: no cover
    _set_keras_mask = None


# MultiHeadAttention's private state and override points, used by
# `layers/qkv_attention.py`, `layers/_mha_arguments.py` and
# `layers/_attention_conversion.py` only.
MULTI_HEAD_ATTENTION_STATE = frozenset({
    "_attention_axes", "_compute_attention", "_dropout", "_dropout_layer",
    "_flash_attention", "_get_common_kwargs_for_sublayer",
    "_inverse_sqrt_key_dim", "_key_dense", "_key_dim", "_num_heads",
    "_output_dense", "_query_dense", "_sliding_window", "_use_gate",
    "_value_dense", "_value_dim",
})
MULTI_HEAD_ATTENTION_MODULES = (
    "keras_addons_qa.layers.qkv_attention",
    "keras_addons_qa.layers._mha_arguments",
    "keras_addons_qa.layers._attention_conversion",
)
# Bookkeeping, not where a model holds its layers: Keras's lists of a
# layer's sublayers and a graph's operations, torch's registry of
# submodules and TensorFlow's checkpoint dependencies (`replace_attention`
# skips them when it looks for attention layers held as attributes).
BOOKKEEPING_ATTRIBUTES = (
    "_layers", "_operations", "_modules", "_self_unconditional_dependency_names",
    "_self_unconditional_checkpoint_dependencies",
)


def set_keras_mask(tensor, mask):
    """Attaches `mask` as the Keras mask of `tensor` where Keras allows it."""
    if _set_keras_mask is not None and mask is not None:
        _set_keras_mask(tensor, mask)


def build_at_init(layer):
    """Marks a layer without weights as built, as Keras does for its own."""
    if hasattr(layer, "_build_at_init"):  # pragma: no cover - Keras >= 3.10
        layer._build_at_init()
    else:  # pragma: no cover
        layer.built = True


def sublayers(layer):
    """The layers `layer` tracks, in the order its weights are listed."""
    return list(getattr(layer, "_layers", ()))


def attribute_names(layer):
    """The names of `layer`'s instance attributes, sublayers included."""
    return set(vars(layer)) | set(getattr(layer, "_modules", None) or ())


def swap_sublayer(parent, old, new):
    """Puts `new` where `old` stands among `parent`'s tracked sublayers, so
    the weights keep their order; the attribute that holds `old` is the
    caller's to reassign (tracking then finds `new` already in place)."""
    parent._tracker.replace_tracked_value("layers", old, new)


def move_sublayer(parent, layer, before):
    """Moves `layer` just before `before` among `parent`'s tracked
    sublayers (the order of the weights)."""
    parent._layers.remove(layer)
    parent._layers.insert(parent._layers.index(before), layer)


def refresh_torch_parameters(layer):
    """torch: collects `layer`'s parameters again after a swap (other
    backends keep no such copy)."""
    if hasattr(layer, "_torch_params"):
        layer._track_variables()
