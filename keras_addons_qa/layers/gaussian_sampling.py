import keras
from keras import ops

from keras_addons_qa import _checks
from keras_addons_qa import _numerics

# exp(80) is 5.5e34: the variance and the KL stay finite in float32 for any
# log-variance, and no realistic model gets near the bound. A float16
# `log_var` gets its gradient back in float16, and d KL / d log_var =
# (exp(log_var) - 1) / 2 passes float16's 65504 at log_var = 11.8: it is
# clipped at 10 (a standard deviation of 148).
_LOG_VAR_LIMIT = 80.0
_FLOAT16_LOG_VAR_LIMIT = 10.0
_FLOAT16_MAX = 65504.0


@keras.saving.register_keras_serializable(package="keras_addons_qa")
class GaussianSampling(keras.layers.Layer):
    """The VAE reparameterization, with its KL term added as a loss.

    Called on `[mean, log_var]` (an encoder's two heads), it returns a
    sample `mean + exp(log_var / 2) * eps`, `eps ~ N(0, 1)`, when training
    (so gradients reach `mean` and `log_var` through the sample), and `mean`
    otherwise (a deterministic code for inference). On every call it adds

        kl_weight * mean_over_batch(sum_over_features(KL))
        KL = 0.5 * (mean**2 + exp(log_var) - 1 - log_var)

    the divergence of `N(mean, exp(log_var))` from `N(0, 1)`, through
    `add_loss`, so `model.fit` optimizes the ELBO without a custom train
    step. `kl_weight` is the beta of a beta-VAE (0 turns the term off).

    The KL term and the noise scale compute in float32 and the sample is cast
    back. `log_var` is clipped to +-80 inside (exp(80) = 5.5e34; +-10 when
    it arrives in float16, where the KL gradient would overflow past 11.8),
    and a float16 sample saturates at +-65504, so neither the sample, the
    KL term nor a gradient is inf or NaN for any finite input, in any
    precision; gradients through a clip are 0 beyond it.

    Args:
        kl_weight: Weight of the KL term, a finite float >= 0.
        seed: Optional int seed of the noise (see `keras.random`).
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: A list `[mean, log_var]` of two tensors of the same shape
            `(batch, ..., latent_dim)`.
        training: Sample if True; return `mean` otherwise (Keras sets it in
            `fit` and `predict`).

    Output shape:
        The shape of `mean`.

    Example:

    >>> import numpy as np
    >>> layer = GaussianSampling()
    >>> mean = np.ones((2, 3), "float32")
    >>> z = layer([mean, np.zeros((2, 3), "float32")])  # inference: the mean
    >>> round(float(layer.losses[0]), 4)  # 0.5 * 1**2 * 3 features
    1.5

    References:
        - [Kingma and Welling, 2014](https://arxiv.org/abs/1312.6114),
          Auto-Encoding Variational Bayes.
    """

    def __init__(self, kl_weight=1.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.kl_weight = _checks.non_negative_float("kl_weight", kl_weight)
        if seed is not None:
            seed = _checks.integer_at_least("seed", seed, 0)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=None):
        mean, log_var = _check_pair(inputs)
        mean32 = _numerics.widen(mean)
        limit = (
            _FLOAT16_LOG_VAR_LIMIT
            if keras.backend.standardize_dtype(log_var.dtype) == "float16"
            else _LOG_VAR_LIMIT
        )
        log_var32 = ops.clip(_numerics.widen(log_var), -limit, limit)
        if self.kl_weight:
            self.add_loss(self.kl_weight * self.kl_divergence(mean32, log_var32))
        if not training:
            return ops.cast(mean, self.compute_dtype)
        eps = keras.random.normal(
            ops.shape(mean32), dtype=mean32.dtype, seed=self.seed_generator
        )
        sample = mean32 + ops.exp(0.5 * log_var32) * eps
        if keras.backend.standardize_dtype(self.compute_dtype) == "float16":
            # Saturate rather than overflow to inf (float16 ends at 65504).
            sample = ops.clip(sample, -_FLOAT16_MAX, _FLOAT16_MAX)
        return ops.cast(sample, self.compute_dtype)

    @staticmethod
    def kl_divergence(mean, log_var):
        """`mean_over_batch(sum_over_features(KL(N(mean, var) || N(0, 1))))`."""
        kl = 0.5 * (ops.square(mean) + ops.exp(log_var) - 1.0 - log_var)
        per_example = ops.sum(ops.reshape(kl, (ops.shape(kl)[0], -1)), axis=-1)
        return _numerics.batch_mean(ops.sum(per_example), kl)

    def compute_output_shape(self, input_shape):
        return tuple(_check_pair(input_shape)[0])

    def get_config(self):
        return {**super().get_config(), "kl_weight": self.kl_weight, "seed": self.seed}


def _check_pair(inputs):
    """Returns `(mean, log_var)`: two tensors (or shapes) of one shape."""
    pair = isinstance(inputs, (list, tuple)) and len(inputs) == 2
    if not pair or not all(
        hasattr(t, "shape") or isinstance(t, (list, tuple)) for t in inputs
    ):
        received = (
            f"a {type(inputs).__name__} of {len(inputs)}"
            if isinstance(inputs, (list, tuple))
            else f"one tensor of shape {tuple(getattr(inputs, 'shape', ()))}"
        )
        raise ValueError(
            "GaussianSampling expects inputs=[mean, log_var]. Received: "
            f"{received}"
        )
    mean, log_var = inputs
    shapes = [_checks.static_shape(getattr(t, "shape", t)) for t in (mean, log_var)]
    if len(shapes[0]) < 1 or len(shapes[0]) != len(shapes[1]) or not all(
        a is None or b is None or a == b for a, b in zip(*shapes)
    ):
        raise ValueError(
            "`mean` and `log_var` must have the same shape, with a batch "
            f"axis. Received: mean.shape={shapes[0]}, log_var.shape={shapes[1]}"
        )
    return mean, log_var
