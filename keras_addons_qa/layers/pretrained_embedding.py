import keras
import numpy as np
from keras import ops

from keras_addons_qa import _checks


@keras.saving.register_keras_serializable(package="keras_addons_qa")
class PretrainedEmbedding(keras.layers.Layer):
    """Frozen pretrained vectors, plus trainable extra dimensions for frequent ids.

    Fine-tuning a whole pretrained embedding on a small task moves the
    vectors of the words the task sees and leaves the others where they
    were, so the two drift apart and the model generalizes worse to words it
    did not see in training. This layer keeps the pretrained `(vocab, dim)`
    matrix as one non-trainable weight (it never changes in training) and
    adds one trainable `(trainable_tokens, trainable_dim)` table for the
    first `trainable_tokens` ids (sort the vocabulary by frequency, so these
    are the frequent words). The output is their concatenation,
    `(..., dim + trainable_dim)`; the trainable part is zero for ids
    `>= trainable_tokens`, and gets no gradient from them.

    The trainable table starts at zero, so an untrained layer gives exactly
    the pretrained vectors (and zeros). Weights are stored as float32 and the
    output is cast to the compute dtype, as in `keras.layers.Embedding`.

    Args:
        embeddings: The pretrained `(vocab, dim)` matrix (NumPy array,
            nested list or tensor), finite.
        trainable_tokens: How many ids, from 0, get a trainable part, an int
            in `[0, vocab]`. 0 gives a frozen embedding.
        trainable_dim: Width of the trainable part, an int >= 1; by default
            `dim`. Only with `trainable_tokens > 0`.
        mask_zero: Whether id 0 is padding, as in `keras.layers.Embedding`:
            the layer then returns a mask for the layers after it.
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Input shape:
        Integer ids of any shape `(...)`.

    Output shape:
        `(..., dim + trainable_dim)` (`(..., dim)` if `trainable_tokens=0`).

    Saving: the config stores the matrix's shape, not its values; the values
    are saved with the weights (`.keras`, `.weights.h5`).

    Example:

    >>> import numpy as np
    >>> vectors = np.arange(12, dtype="float32").reshape(4, 3)
    >>> layer = PretrainedEmbedding(vectors, trainable_tokens=2, trainable_dim=1)
    >>> keras.ops.convert_to_numpy(layer(np.array([0, 3]))).tolist()
    [[0.0, 1.0, 2.0, 0.0], [9.0, 10.0, 11.0, 0.0]]
    >>> [w.name for w in layer.trainable_weights]
    ['trainable_embeddings']
    """

    def __init__(
        self,
        embeddings,
        trainable_tokens=0,
        trainable_dim=None,
        mask_zero=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        matrix = np.asarray(
            ops.convert_to_numpy(embeddings) if ops.is_tensor(embeddings) else embeddings
        )
        if matrix.ndim != 2 or 0 in matrix.shape:
            raise ValueError(
                "Argument `embeddings` must be a non-empty 2-D (vocab, dim) "
                f"matrix. Received: embeddings.shape={matrix.shape}"
            )
        if not np.issubdtype(matrix.dtype, np.number):
            raise ValueError(
                "Argument `embeddings` must hold numbers. Received: "
                f"embeddings.dtype={matrix.dtype}"
            )
        bad = matrix.size - np.count_nonzero(np.isfinite(matrix))
        if bad:
            raise ValueError(
                "Argument `embeddings` must be finite. Received: embeddings "
                f"with non-finite entries ({bad} of {matrix.size})"
            )
        self._initial_embeddings = matrix
        self.vocabulary_size, self.embedding_dim = matrix.shape
        self.trainable_tokens = _checks.integer_at_least(
            "trainable_tokens", trainable_tokens, 0
        )
        if self.trainable_tokens > self.vocabulary_size:
            raise ValueError(
                "Argument `trainable_tokens` must be at most the vocabulary "
                f"size {self.vocabulary_size}. Received: "
                f"trainable_tokens={trainable_tokens!r}"
            )
        if trainable_dim is not None:
            trainable_dim = _checks.integer_at_least("trainable_dim", trainable_dim, 1)
            if not self.trainable_tokens:
                raise ValueError(
                    "Argument `trainable_dim` needs `trainable_tokens` > 0 "
                    "(with no trainable ids there is no trainable part). "
                    f"Received: trainable_dim={trainable_dim!r}, trainable_tokens=0"
                )
        self._trainable_dim_arg = trainable_dim
        self.trainable_dim = (
            (trainable_dim or self.embedding_dim) if self.trainable_tokens else 0
        )
        self.mask_zero = bool(mask_zero)
        self.supports_masking = self.mask_zero

    def build(self, input_shape=None):
        self.embeddings = self.add_weight(
            name="embeddings",
            shape=(self.vocabulary_size, self.embedding_dim),
            initializer="zeros",
            trainable=False,
        )
        self.embeddings.assign(self._initial_embeddings)
        self._initial_embeddings = None  # the variable holds it now
        self.trainable_embeddings = None
        if self.trainable_tokens:
            self.trainable_embeddings = self.add_weight(
                name="trainable_embeddings",
                shape=(self.trainable_tokens, self.trainable_dim),
                initializer="zeros",
            )

    def call(self, inputs):
        ids = ops.cast(inputs, "int32")
        outputs = ops.take(self.embeddings, ids, axis=0)
        if self.trainable_tokens:
            frequent = ops.expand_dims(ids < self.trainable_tokens, -1)
            rows = ops.take(
                self.trainable_embeddings,
                ops.minimum(ids, self.trainable_tokens - 1),
                axis=0,
            )
            # `where`, not a product: ids past the table give 0, and no gradient.
            rows = ops.where(frequent, rows, ops.zeros((), rows.dtype))
            outputs = ops.concatenate([outputs, rows], axis=-1)
        return ops.cast(outputs, self.compute_dtype)

    def compute_mask(self, inputs, mask=None):
        if not self.mask_zero:
            return None
        return ops.not_equal(inputs, 0)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.embedding_dim + self.trainable_dim,)

    def compute_output_spec(self, inputs):
        return keras.KerasTensor(
            self.compute_output_shape(inputs.shape), dtype=self.compute_dtype
        )

    def get_config(self):
        return {
            **super().get_config(),
            "embeddings_shape": [self.vocabulary_size, self.embedding_dim],
            "trainable_tokens": self.trainable_tokens,
            "trainable_dim": self._trainable_dim_arg,
            "mask_zero": self.mask_zero,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        # Placeholder values of the right shape: the saved weights replace them.
        shape = config.pop("embeddings_shape")
        return cls(np.zeros(shape, "float32"), **config)
