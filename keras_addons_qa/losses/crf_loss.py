import keras
import numpy as np
from keras import ops

from keras_addons_qa import _checks
from keras_addons_qa.text import _chain


@keras.saving.register_keras_serializable(package="keras_addons_qa")
class CRFLoss(keras.losses.Loss):
    """The negative log-likelihood of the gold tags under a `CRF` layer.

    `y_true` is the `(batch, time)` int tags; `y_pred` the CRF layer's
    `"potentials"` output, which holds each example's whole chain
    (transitions, tag scores, boundary scores and its mask), so the loss
    has no state and no reference to the layer: it is compiled, saved and
    loaded like any Keras loss. Per example it is `log Z - score(tags)`
    over the unmasked steps (the tags at masked steps are ignored; an
    example with no unmasked step has loss 0), computed in float32 with the
    forward algorithm. The default reduction averages over the batch, as
    TensorFlow Addons users write `-reduce_mean(log_likelihood)`;
    `reduction="token_mean"` divides the batch's sum by its number of
    unmasked steps instead (pytorch-crf's `token_mean`: the loss per tag,
    which does not grow with the length of the sentences). Under a CRF
    with `allowed_transitions`, gold tags that break the scheme raise a
    `ValueError` in eager code; a compiled step cannot raise, and there
    their loss is about 1e30 (finite, the other examples' gradients
    unchanged). Tags outside `[0, num_tags)` at unmasked steps raise a
    `ValueError` in eager code; in a compiled step, such an example's loss
    is 0.

    ```python
    model.compile("adam", loss={"potentials": kaq.losses.CRFLoss()})
    ```

    Args:
        name: Name of the loss.
        reduction: Keras reduction over the batch, or `"token_mean"`.
        dtype: Dtype `y_pred` is cast to on the way in (float32 by
            default); the forward algorithm runs in float32 (float64 for
            float64).

    Example:

    >>> import numpy as np
    >>> from keras_addons_qa.layers import CRF
    >>> crf = CRF(2, use_kernel=False, use_boundary=False, chain_initializer="zeros")
    >>> scores = np.zeros((1, 3, 2), "float32")  # every tag sequence equally likely
    >>> potentials = crf(scores)["potentials"]
    >>> loss = CRFLoss()(np.array([[0, 1, 1]]), potentials)
    >>> round(float(loss), 4), round(3 * float(np.log(2)), 4)  # -log(1 / 2**3)
    (2.0794, 2.0794)
    """

    def __init__(self, name="crf_loss", reduction="sum_over_batch_size", dtype=None):
        self.token_mean = reduction == "token_mean"
        super().__init__(name=name, reduction="sum" if self.token_mean else reduction, dtype=dtype)

    def call(self, y_true, y_pred):
        shape = _checks.static_shape(y_pred.shape)
        if len(shape) != 4 or (None not in shape[2:] and shape[2] != shape[3] + 1):
            raise ValueError(
                "CRFLoss expects the CRF layer's `potentials` output, of shape "
                f"(batch, time, num_tags + 1, num_tags). Received: y_pred.shape={shape}"
            )
        tags_shape = _checks.static_shape(y_true.shape)
        if len(tags_shape) != 2 or any(
            None not in (t, p) and t != p for t, p in zip(tags_shape, shape[:2])
        ):
            raise ValueError(
                "CRFLoss expects (batch, time) int tags as y_true, with the "
                f"potentials' batch size and time steps. Received: y_true.shape={tags_shape}, "
                f"y_pred.shape={shape}"
            )
        # Keras hands y_true over as floats: a fraction would be truncated.
        _checks.check_whole("CRFLoss", "y_true", y_true)
        tags = ops.cast(y_true, "int32")
        num_tags = shape[3] if shape[3] is not None else ops.shape(y_pred)[3]
        valid = y_pred[:, :, -1, 0] > 0.5
        in_range = _chain.in_range(tags, num_tags, valid, "CRFLoss", "y_true", "at unmasked steps")
        loss = -_chain.log_likelihood(y_pred, ops.where(in_range, tags, 0))
        # Compiled code cannot raise: an example with a tag out of range at
        # an unmasked step gets loss 0 (and no gradient).
        loss = ops.where(ops.all(ops.logical_or(in_range, ops.logical_not(valid)), axis=1), loss, 0.0)
        known = _checks.known_value(loss)
        broke = None if known is None else np.isfinite(known) & (known > _chain.BROKE_RULE)
        if broke is not None and np.any(broke):
            raise ValueError(
                "CRFLoss: the gold tags of the examples at batch indices "
                f"{np.flatnonzero(broke).tolist()} take a transition, "
                "first or last tag that the CRF's allowed_transitions rule out (the tags "
                "break the tagging scheme, such as I-PER after O under BIO): a data error"
            )
        if self.token_mean:  # summed by the "sum" reduction
            tokens = ops.sum(ops.cast(y_pred[:, :, -1, 0] > 0.5, loss.dtype))
            loss = loss / ops.maximum(tokens, 1.0)
        return loss

    def get_config(self):
        config = super().get_config()
        config = {k: config[k] for k in ("name", "reduction", "dtype") if k in config}
        if self.token_mean:
            config["reduction"] = "token_mean"
        return config
