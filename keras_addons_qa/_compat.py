"""The one place the package reaches into Keras internals (internal).

- Keras has no public API to attach a mask to a tensor a layer returns; its
  own `MultiHeadAttention` uses `keras.src.backend.set_keras_mask`. If a
  future Keras moves it, the fallback does nothing: the output then still
  carries the query's Keras mask through `Layer.compute_mask`, only an
  explicitly passed `query_mask` is not attached.
- Keras builds a layer without weights when it is created (its own
  `ActivityRegularization` does) through the private `Layer._build_at_init`,
  which Keras 3.10 added; before it, such layers set `built = True`.
"""

try:  # pragma: no cover - depends on the installed Keras
    from keras.src.backend import set_keras_mask as _set_keras_mask
except ImportError:  # pragma: no cover
    _set_keras_mask = None


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
