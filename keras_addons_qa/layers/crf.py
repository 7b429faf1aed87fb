import keras
from keras import ops

from keras_addons_qa import _checks
from keras_addons_qa import _numerics
from keras_addons_qa.text import _chain
from keras_addons_qa.text import tagging


@keras.saving.register_keras_serializable(package="keras_addons_qa")
class CRF(keras.layers.Layer):
    """A linear-chain conditional random field for sequence tagging.

    Scores every tag sequence of an example as the sum of per-step tag
    scores (a `Dense` projection of the features), learned transition
    scores between consecutive tags and, optionally, learned scores for
    the first and the last tag; trains on the log-likelihood of the gold
    sequence against all sequences (the forward algorithm) and decodes the
    best sequence (Viterbi), both exactly, in float32.

    It returns a dict:

    - `"tags"`: the int32 `(batch, time)` Viterbi tag path, the output a
      server or a phone uses; 0 at masked steps. It is part of the model,
      so SavedModel, LiteRT (builtin ops) and ONNX exports decode.
    - `"potentials"`: float32 `(batch, time, num_tags + 1, num_tags)`, the
      whole chain of each example (per-step transition-plus-tag scores and
      a row marking the unmasked steps), what `CRFLoss` trains on.

    What the user writes: a plain `compile` and `fit(x, tags)`, the loss
    on `"potentials"`, any tag metric on `"tags"`:

    ```python
    tokens = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(vocabulary, 64, mask_zero=True)(tokens)
    x = keras.layers.Bidirectional(keras.layers.LSTM(64, return_sequences=True))(x)
    model = keras.Model(tokens, kaq.layers.CRF(num_tags)(x))
    model.compile("adam", loss={"potentials": kaq.losses.CRFLoss()})
    model.fit(tokens_array, tags_array)          # tags: (batch, time) ints
    model.predict(tokens_array)["tags"]          # the decoded tags
    deployed = keras.Model(model.input, model.output["tags"])
    ```

    The Keras mask (from `Embedding(mask_zero=True)`, `Masking`, or the
    `mask` argument) gives each example's steps: masked steps change
    nothing, wherever they are (right or left padding, holes), and get no
    gradient. The tags there are ignored in training and are 0 in the
    output. For a tag metric during `fit`, give the tags to both outputs,
    `fit(x, {"tags": tags, "potentials": tags})` with
    `metrics={"tags": [keras.metrics.Accuracy()]}` (it counts masked steps,
    where both are 0 when the padding tag is 0; the string `"accuracy"`
    would pick an arg-max accuracy, wrong for int tags). Keras before 3.12
    matches a metrics dict against output layer names, not dict keys: there,
    name the outputs, `{k: keras.layers.Identity(name=k)(v) for k, v in
    crf(x).items()}`.

    The dynamic programs are loops over time whose steps cost the same at
    any length: one graph for every length on TensorFlow and JAX, under XLA
    too (on torch the loop is a Python loop, so an ONNX export from torch
    fixes the length). Costs: `"potentials"` holds `time * (num_tags + 1)
    * num_tags` floats per example, and the Viterbi decoding also runs in
    each training step (a loop like the forward algorithm's, with no
    gradient), as do the marginals' forward and backward loops with
    `return_marginals=True`; the model a server runs, `keras.Model(inputs,
    outputs["tags"])`, returns the tags alone.

    Args:
        num_tags: Number of tags, an int >= 1.
        use_kernel: Whether to project the features to `num_tags` scores
            with a `Dense` layer. If False, the input's last axis must be
            `num_tags` (the tag scores themselves).
        use_boundary: Whether to learn scores for the first and the last
            tag of each sequence (TensorFlow Addons' `left_boundary` and
            `right_boundary`).
        kernel_initializer: Initializer of the projection's kernel.
        chain_initializer: Initializer of the `(num_tags, num_tags)`
            transition scores, entry `[i, j]` for tag `i` followed by tag
            `j`.
        boundary_initializer: Initializer of the boundary scores.
        kernel_regularizer: Regularizer of the projection's kernel.
        chain_regularizer: Regularizer of the transition scores.
        allowed_transitions: None, or a span tagging scheme and the label
            of each tag, `("BIO", ["O", "B-PER", "I-PER", ...])` (the
            schemes of `keras_addons_qa.text.allowed_transitions`). Then
            the transitions, first and last tags the scheme rules out get
            no probability, in training (the partition function) as in
            decoding, so the tags are always a valid sequence, exported
            models included. Gold tags that break the scheme are a data
            error: `CRFLoss` raises in eager code; in a compiled step their
            loss is about 1e30 (the ruled-out transition's score), finite,
            with the gradients of any other example.
        return_marginals: Whether to also output `"marginals"`: float32
            `(batch, time, num_tags)`, the posterior probability of each
            tag at each step (forward-backward; each unmasked step sums to
            1, masked steps are 0), confidence scores for a server to
            return or for active learning to rank by.
        **kwargs: Base layer keyword arguments, such as `name` or `dtype`.

    Call arguments:
        inputs: `(batch, time, features)` features (the tag scores
            themselves with `use_kernel=False`).
        mask: Optional bool `(batch, time)`, True at the steps to tag; by
            default the inputs' Keras mask. Without either, every step
            counts.

    Input shape:
        `(batch, time, features)`, and an optional `(batch, time)` mask.

    Output shape:
        `{"tags": (batch, time), "potentials": (batch, time, num_tags + 1,
        num_tags)}`, and `"marginals": (batch, time, num_tags)` with
        `return_marginals=True`.

    Example:

    >>> import numpy as np
    >>> crf = CRF(3, use_kernel=False, use_boundary=False, chain_initializer="zeros")
    >>> scores = np.array([[[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]]], "float32")
    >>> keras.ops.convert_to_numpy(crf(scores)["tags"]).tolist()
    [[1, 0]]
    """

    def __init__(
        self,
        num_tags,
        use_kernel=True,
        use_boundary=True,
        kernel_initializer="glorot_uniform",
        chain_initializer="orthogonal",
        boundary_initializer="zeros",
        kernel_regularizer=None,
        chain_regularizer=None,
        allowed_transitions=None,
        return_marginals=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_tags = _checks.integer_at_least("num_tags", num_tags, 1)
        self.use_kernel = bool(use_kernel)
        self.use_boundary = bool(use_boundary)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.chain_initializer = keras.initializers.get(chain_initializer)
        self.boundary_initializer = keras.initializers.get(boundary_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.chain_regularizer = keras.regularizers.get(chain_regularizer)
        self.return_marginals = bool(return_marginals)
        self.allowed_transitions = None
        if allowed_transitions is not None:
            try:
                constraint_type, labels = allowed_transitions
            except (TypeError, ValueError):
                raise ValueError(
                    "allowed_transitions must be None or (constraint_type, labels), e.g. "
                    f"('BIO', ['O', 'B-PER', 'I-PER']). Received: allowed_transitions={allowed_transitions!r}"
                ) from None
            self._allowed = tagging.allowed_transitions(constraint_type, labels)
            if isinstance(labels, dict):  # in index order, as the function read them
                labels = [labels[i] for i in range(len(labels))]
            labels = [str(label) for label in labels]
            if len(labels) != self.num_tags:
                raise ValueError(
                    f"CRF: allowed_transitions needs a label for each of the num_tags={self.num_tags} "
                    f"tags. Received: allowed_transitions={allowed_transitions!r} ({len(labels)} labels)"
                )
            self.allowed_transitions = (str(constraint_type), labels)
        self.supports_masking = True
        self.dense = None
        if self.use_kernel:
            self.dense = keras.layers.Dense(
                self.num_tags,
                kernel_initializer=self.kernel_initializer,
                kernel_regularizer=self.kernel_regularizer,
                dtype=self.dtype_policy,
                name="dense",
            )

    def build(self, inputs_shape):
        if inputs_shape is None or len(inputs_shape) != 3:
            raise ValueError(
                "CRF expects inputs of shape (batch, time, features). "
                f"Received: inputs.shape={None if inputs_shape is None else tuple(inputs_shape)}"
            )
        if self.use_kernel:
            self.dense.build(inputs_shape)
        elif inputs_shape[-1] != self.num_tags:
            raise ValueError(
                "With use_kernel=False, the inputs are the tag scores and "
                f"their last axis must be num_tags={self.num_tags}. "
                f"Received: inputs.shape={tuple(inputs_shape)}"
            )
        # float32 under every policy: the dynamic programs compute in float32.
        self.chain_kernel = self.add_weight(
            name="chain_kernel",
            shape=(self.num_tags, self.num_tags),
            initializer=self.chain_initializer,
            regularizer=self.chain_regularizer,
            autocast=False,
        )
        if self.allowed_transitions is not None:
            # Weights, not constants in the graph; not trained.
            self.allowed_chain, self.allowed_start, self.allowed_end = (
                self.add_weight(
                    name=name, shape=allowed.shape, trainable=False, autocast=False,
                    initializer=keras.initializers.Constant(allowed.astype("float32")),
                )
                for name, allowed in zip(("allowed_chain", "allowed_start", "allowed_end"), self._allowed)
            )
        self.left_boundary = self.right_boundary = None
        if self.use_boundary:
            self.left_boundary, self.right_boundary = (
                self.add_weight(
                    name=name, shape=(self.num_tags,), initializer=self.boundary_initializer, autocast=False
                )
                for name in ("left_boundary", "right_boundary")
            )

    def call(self, inputs, mask=None):
        inputs = ops.convert_to_tensor(inputs)
        if mask is None:
            valid = ops.ones(ops.shape(inputs)[:2], "bool")
        else:
            _checks.check_shape("mask", mask.shape, tuple(inputs.shape[:2]))
            valid = ops.cast(mask, "bool")
            # Whatever masked steps hold (inf, NaN) reaches neither the
            # projection nor any gradient.
            inputs = _numerics.sanitize(inputs, valid)
        scores = self.dense(inputs) if self.use_kernel else inputs
        # Clipped to +-1e20 (`_chain.SCORE_LIMIT`): sums of scores
        # near float32's end would overflow.
        scores = _chain.bounded(_numerics.widen(ops.convert_to_tensor(scores)))
        transitions = _chain.bounded(ops.cast(self.chain_kernel.value, scores.dtype))
        boundaries = {}
        if self.use_boundary:
            boundaries = {"start": self.left_boundary.value, "end": self.right_boundary.value}
        boundaries = {k: _chain.bounded(ops.cast(v, scores.dtype)) for k, v in boundaries.items()}
        if self.allowed_transitions is not None:
            ruled_out = _chain.RULED_OUT
            transitions = ops.where(self.allowed_chain.value > 0.5, transitions, ruled_out)
            for key, allowed in (("start", self.allowed_start), ("end", self.allowed_end)):
                scores_of = ops.where(allowed.value > 0.5, boundaries.get(key, 0.0), ruled_out)
                boundaries[key] = ops.cast(scores_of, scores.dtype)
        potentials = _chain.potentials(scores, transitions, valid, **boundaries)
        # The decoding has no gradient: it records none (on torch, it would).
        tags = _chain.decode(ops.stop_gradient(potentials))
        outputs = {"tags": tags, "potentials": potentials}
        if self.return_marginals:
            outputs["marginals"] = _chain.marginals(potentials)
        return outputs

    def compute_mask(self, inputs, mask=None):
        # The mask stops here: Keras's metrics reduce `(batch, time)`
        # outputs per example and cannot take a `(batch, time)` mask.
        return None

    def compute_output_spec(self, inputs, mask=None):
        batch, steps = inputs.shape[:2]
        dtype = "float64" if self.compute_dtype == "float64" else "float32"
        outputs = {
            "tags": keras.KerasTensor((batch, steps), dtype="int32"),
            "potentials": keras.KerasTensor((batch, steps, self.num_tags + 1, self.num_tags), dtype=dtype),
        }
        if self.return_marginals:
            outputs["marginals"] = keras.KerasTensor((batch, steps, self.num_tags), dtype=dtype)
        return outputs

    def get_config(self):
        return {
            **super().get_config(),
            "num_tags": self.num_tags,
            "use_kernel": self.use_kernel,
            "use_boundary": self.use_boundary,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "chain_initializer": keras.initializers.serialize(self.chain_initializer),
            "boundary_initializer": keras.initializers.serialize(self.boundary_initializer),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            "chain_regularizer": keras.regularizers.serialize(self.chain_regularizer),
            "allowed_transitions": self.allowed_transitions,
            "return_marginals": self.return_marginals,
        }
