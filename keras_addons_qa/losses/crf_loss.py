import keras
import numpy as np
from keras import ops

from keras_addons_qa import _checks
from keras_addons_qa.text import crf as crf_functions


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
    unchanged).

    ```python
    model.compile("adam", loss={"potentials": kaq.losses.CRFLoss()})
    ```

    Args:
        name: Name of the loss.
        reduction: Keras reduction over the batch, or `"token_mean"`.
        dtype: Dtype `y_pred` is cast to on the way in (float32 by
            default); the forward algorithm runs in float32 (float64 for
            float64).
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
        if len(tags_shape) != 2 or None not in (tags_shape[1], shape[1]) and tags_shape[1] != shape[1]:
            raise ValueError(
                "CRFLoss expects (batch, time) int tags as y_true, with the "
                f"potentials' time steps. Received: y_true.shape={tags_shape}, "
                f"y_pred.shape={shape}"
            )
        loss = -crf_functions._chain_log_likelihood(y_pred, ops.cast(y_true, "int32"))
        known = _checks.known_value(loss)
        if known is not None and np.any(known > -0.1 * crf_functions.RULED_OUT):
            raise ValueError(
                "CRFLoss: the gold tags of the examples at batch indices "
                f"{np.flatnonzero(known > -0.1 * crf_functions.RULED_OUT).tolist()} take a transition, "
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
