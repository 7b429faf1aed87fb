import numbers

import keras
import numpy as np
from keras import ops

from keras_addons_qa import _checks
from keras_addons_qa import _numerics

_DISTANCES = ("mse", "cosine")


@keras.saving.register_keras_serializable(package="keras_addons_qa")
class AlmostOneHotEmbeddingLoss(keras.losses.Loss):
    """Compares the embedding of a sharpened softmax with a target vector.

    A differentiable stand-in for "take the argmax word, look up its
    embedding, compare it with the target embedding" (argmax has no
    gradient). The predicted distribution `p` is sharpened towards one-hot,

        q = normalize(p ** power), repeated `iterations` times,

    mapped through the embedding matrix, `e = q @ embedding`, and compared
    with `y_true` by `distance`.

    Two things make it safe to use where the textbook recipe fails:

    - The sharpening is done in log space, as one
      `q = softmax(power ** iterations * log p)` (each normalization is a
      shift that the next softmax ignores), with `log p` shifted to a
      maximum of 0 first. No power of a probability is ever formed: a
      `power` of 1000, probabilities of 1e-30, or exact zeros give finite
      losses and finite gradients (`p ** power` underflows to 0 and
      `0 / 0` is NaN).
    - `q @ embedding` is one matrix product for the whole batch (and time
      axis): memory `batch * (vocab + dim)`, never `batch * vocab * dim` as
      when the embedding is tiled per example. Its gradient is written by
      hand, so that training keeps two `(..., vocab)` buffers, not five.

    With a softmax as the model's last layer, drop it and pass
    `from_logits=True`: the loss is the same, and the softmax's own gradient
    (one more `(..., vocab)` buffer) is gone.

    The matrix is held once, as a non-trainable float32 `keras.Variable`
    (`loss.embedding`): traced steps read it, they do not embed it as a
    constant. A compiled model saved as `.keras` writes it with the model's
    weights (`model.weights.h5`), not into `config.json`, whose entry for
    the loss holds its shape only; `keras.saving.load_model` restores it,
    and the loaded model trains on with the same loss. Files saved by
    0.1.0, which hold the matrix in the config, still load.

    Args:
        embedding: `(vocab, dim)` matrix: a NumPy array, nested list, or
            backend tensor, stored as float32. None only when loading a
            saved model (the matrix then arrives with its weights).
        power: Sharpening exponent, a finite float > 0 (1 leaves `p` as is).
        iterations: How many times to sharpen, an integer >= 1. The result
            equals one sharpening with exponent `power ** iterations`.
        distance: `"mse"` (mean squared error over `dim`) or `"cosine"`
            (negative cosine similarity, as `keras.losses.CosineSimilarity`:
            -1 for identical directions).
        from_logits: Whether `y_pred` holds logits rather than probabilities.
        reduction: Reduction of the per-example losses, as for every Keras
            loss. Defaults to `"sum_over_batch_size"`.
        name: Name of the loss.
        dtype: Dtype of the returned loss; the computation itself always
            runs in float32.
        embedding_shape: The `(vocab, dim)` shape, given by a saved config
            in place of the matrix; not needed otherwise.

    Call arguments:
        y_true: `(..., dim)` target vectors.
        y_pred: `(..., vocab)` probabilities (or logits).
        sample_weight: Optional weights, as for every Keras loss.

    Example:

    >>> import numpy as np
    >>> loss = AlmostOneHotEmbeddingLoss(np.eye(3), power=2.0)
    >>> p = np.array([[0.5, 0.3, 0.2]], "float32")
    >>> round(float(loss(np.array([[1.0, 0.0, 0.0]]), p)), 5)
    0.0614
    """

    def __init__(
        self,
        embedding=None,
        power=4.0,
        iterations=1,
        distance="mse",
        from_logits=False,
        reduction="sum_over_batch_size",
        name="almost_one_hot_embedding",
        dtype=None,
        embedding_shape=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.embedding = None
        if embedding is not None:
            self._set_embedding(embedding)
            self._embedding_shape = tuple(self.embedding.shape)
        elif embedding_shape is not None:
            if not isinstance(embedding_shape, (tuple, list)) or len(embedding_shape) != 2 or any(
                isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 1
                for d in embedding_shape
            ):
                raise ValueError(
                    "Argument `embedding_shape` must be a pair of ints >= 1, "
                    f"(vocab, dim). Received: embedding_shape={embedding_shape!r}"
                )
            self._embedding_shape = tuple(int(d) for d in embedding_shape)
        else:
            raise ValueError(
                "Argument `embedding` must be a 2-D (vocab, dim) matrix. "
                f"Received: embedding={embedding!r}"
            )
        self.power = _checks.positive_float("power", power)
        self.iterations = _checks.integer_at_least("iterations", iterations, 1)
        self.distance = _checks.one_of("distance", distance, _DISTANCES)
        self.from_logits = bool(from_logits)
        self._dtype_arg = dtype

    def _set_embedding(self, embedding):
        matrix = np.asarray(
            ops.convert_to_numpy(embedding)
            if ops.is_tensor(embedding)
            else embedding,
            dtype="float32",
        )
        if matrix.ndim != 2 or 0 in matrix.shape:
            raise ValueError(
                "Argument `embedding` must be a non-empty 2-D (vocab, dim) matrix. "
                f"Received: embedding.shape={tuple(matrix.shape)}"
            )
        if not np.all(np.isfinite(matrix)):
            raise ValueError(
                "Argument `embedding` must be finite. Received: embedding with "
                f"non-finite entries ({int(np.sum(~np.isfinite(matrix)))} of {matrix.size})"
            )
        if self.embedding is not None and tuple(self.embedding.shape) == matrix.shape:
            self.embedding.assign(matrix)
            return
        self.embedding = keras.Variable(
            matrix, trainable=False, dtype="float32", name="embedding"
        )

    def save_own_variables(self, store):
        """Writes the matrix with the model's weights (`model.save`)."""
        if self.embedding is not None:
            store["embedding"] = self.embedding

    def load_own_variables(self, store):
        """Reads the matrix back (`keras.saving.load_model`). A 0.1.0 file
        stores none here: its config already held the matrix."""
        if "embedding" in store.keys():
            self._set_embedding(store["embedding"])

    @property
    def vocab_size(self):
        return self._embedding_shape[0]

    @property
    def embedding_dim(self):
        return self._embedding_shape[1]

    def sharpen(self, y_pred):
        """Returns `q`, the sharpened float32 distribution over the vocab."""
        y_pred = _numerics.widen(y_pred)
        if self.from_logits:
            # log_softmax(logits) is logits minus a per-row constant, which
            # the sharpening softmax ignores: no (..., vocab) pass for it.
            log_probs = y_pred
        else:
            log_probs = _numerics.safe_log(y_pred)
        return _numerics.sharpen(log_probs, self.power, self.iterations)

    def _embed(self, y_pred):
        """`sharpen(y_pred) @ embedding`, with a hand-written gradient.

        One `(..., vocab) @ (vocab, dim)` product: no per-example tiling.
        The gradient uses `sum_v q_v (g E^T)_v = g . predicted`, a
        `(..., dim)` dot, so the `(..., vocab)` work of the backward pass
        is one product (`g E^T`) and elementwise steps on its result. Two
        `(..., vocab)` buffers are alive at its peak (`q` and that
        product), where automatic differentiation keeps about five.
        """
        y_pred = _numerics.widen(y_pred)
        if self.embedding is None:
            raise ValueError(
                "This AlmostOneHotEmbeddingLoss was built from a config "
                "without its matrix, which arrives with the weights of a "
                "saved model (`keras.saving.load_model`). Pass "
                "`embedding=` to use it on its own."
            )
        matrix = ops.cast(self.embedding, y_pred.dtype)
        scale = _numerics.sharpening_scale(self.power, self.iterations)
        from_logits = self.from_logits

        @_numerics.custom_gradient
        def embed(probs_or_logits):
            q = self.sharpen(probs_or_logits)
            predicted = ops.matmul(q, matrix)

            def grad(upstream):
                # The sharpening's scale multiplies the (..., dim) upstream,
                # not a (..., vocab) tensor: as `q * scale`, TensorFlow's
                # graph optimizer computes that product during the forward
                # pass, and its buffer is held alongside `q` and `g E^T`
                # (a third (..., vocab) buffer in about one step in four).
                upstream = ops.cast(upstream, q.dtype) * scale
                # `g E^T` as an einsum: a product with the transposed
                # operand, no `(dim, vocab)` copy of the matrix. Its rows
                # are flattened first: TensorFlow 2.19 computes the
                # ellipsis form `...d,vd->...v` wrongly for 17 rows or more
                # outside XLA.
                rows = ops.reshape(upstream, (-1, ops.shape(upstream)[-1]))
                d_q = ops.reshape(
                    ops.einsum("bd,vd->bv", rows, matrix), ops.shape(q)
                )
                inner = ops.sum(upstream * predicted, axis=-1, keepdims=True)
                d_log = (d_q - inner) * q  # the softmax's gradient
                if from_logits:
                    return d_log
                # d log(max(p, tiny)) / dp: 1 / p where p >= tiny, else 0.
                # Divided first and selected after (the select drops the
                # quotients of p = 0), so every (..., vocab) step takes
                # d_log's buffer over. The floor is compared with a
                # (..., 1) threshold read from `inner`, a value of the
                # backward pass: compared with a constant, the comparison
                # depends on `p` alone, and TensorFlow's executor runs it at
                # the start of the step, so its (..., vocab) bool is held
                # through the forward pass too (a third (..., vocab) buffer
                # at the step's peak).
                floor = _numerics.FLOAT32_TINY + ops.zeros_like(inner)
                return ops.where(probs_or_logits >= floor, d_log / probs_or_logits, 0.0)

            return predicted, grad

        return embed(y_pred)

    def call(self, y_true, y_pred):
        if y_pred.shape[-1] is not None and y_pred.shape[-1] != self.vocab_size:
            raise ValueError(
                "The last axis of `y_pred` must be the vocabulary size "
                f"{self.vocab_size} of `embedding`. Received: "
                f"y_pred.shape={tuple(y_pred.shape)}"
            )
        if y_true.shape[-1] is not None and y_true.shape[-1] != self.embedding_dim:
            raise ValueError(
                "The last axis of `y_true` must be the embedding size "
                f"{self.embedding_dim} of `embedding`. Received: "
                f"y_true.shape={tuple(y_true.shape)}"
            )
        true_shape = _checks.static_shape(y_true.shape)[:-1]
        pred_shape = _checks.static_shape(y_pred.shape)[:-1]
        if len(true_shape) != len(pred_shape) or any(
            None not in (t, p) and t != p for t, p in zip(true_shape, pred_shape)
        ):
            raise ValueError(
                "`y_true` must have the leading shape of `y_pred` (no broadcast): "
                f"(..., dim) targets for (..., vocab) predictions. Received: "
                f"y_true.shape={tuple(y_true.shape)}, y_pred.shape={tuple(y_pred.shape)}"
            )
        if 0 in pred_shape:  # no example: nothing to compare (a max of nothing fails)
            return ops.zeros(ops.shape(y_pred)[:-1], _numerics.widen(y_pred).dtype)
        predicted = self._embed(y_pred)
        target = ops.cast(y_true, predicted.dtype)
        if self.distance == "mse":
            # sum / dim rather than ops.mean: Keras's JAX `mean` computes
            # float64 inputs at float32 precision (Keras 3.15).
            squared = ops.sum(ops.square(predicted - target), axis=-1)
            return squared / ops.cast(ops.shape(predicted)[-1], squared.dtype)
        return -ops.sum(_l2_normalize(predicted) * _l2_normalize(target), axis=-1)

    def get_config(self):
        return {
            **super().get_config(),
            "embedding_shape": list(self._embedding_shape),
            "power": self.power,
            "iterations": self.iterations,
            "distance": self.distance,
            "from_logits": self.from_logits,
            "dtype": self._dtype_arg,
        }


def _l2_normalize(x):
    # The same epsilon as keras.losses.CosineSimilarity; zero vectors stay 0.
    return x * ops.rsqrt(ops.maximum(ops.sum(ops.square(x), axis=-1, keepdims=True), 1e-12))
