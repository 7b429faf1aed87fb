"""The dynamic programs over a chain of tags, and the chain format the
`CRF` layer outputs and `CRFLoss` reads: private to the package.

`text.crf` (the public functions), `layers.crf` and `losses.crf_loss` use
them; the forward and backward algorithms and Viterbi are written once
here. Each is a scan over time (`_xla.scan`: on TensorFlow and JAX the
traced graph does not grow with the length; on torch the loop runs in
Python), each step O(1) in the length, in its gradient too.
"""

import keras
import numpy as np
from keras import ops

from keras_addons_qa import _buffers
from keras_addons_qa import _checks
from keras_addons_qa import _numerics
from keras_addons_qa import _xla


# The score of what a constraint rules out (`CRF(allowed_transitions=...)`):
# finite, so that no sum of scores is inf - inf, and low enough that its
# exponential is 0 next to any allowed sequence's.
RULED_OUT = -1e30
# A loss above this (finite) took a ruled-out transition.
BROKE_RULE = -0.1 * RULED_OUT
# Scores are clipped to +-SCORE_LIMIT (their gradient is 0 beyond it):
# float32 ends at 3.4e38, and a chain of scores near it sums to inf, whose
# differences are NaN. No learned score comes near it; -inf scores (ruled
# out, `crf_filtered_inputs`) become finite, so no sum is inf - inf, and a
# NaN score counts as the lowest, so a decoded tag is always a tag.
SCORE_LIMIT = 1e20


def bounded(scores):
    return ops.where(scores >= -SCORE_LIMIT, ops.minimum(scores, SCORE_LIMIT), -SCORE_LIMIT)


def as_tensor(x, name="inputs", function=""):
    if x is None:
        raise ValueError(f"{function}: `{name}` must be a tensor. Received: {name}=None")
    x = ops.convert_to_tensor(x)
    # A TensorFlow variable passes through `convert_to_tensor` as it is;
    # `take_along_axis` needs a tensor.
    return x if hasattr(x, "ndim") else ops.copy(x)


def is_empty(scores):
    """Whether `(batch, time, ...)` scores have no step or no example, as
    far as their static shape tells: the loops and maxima are skipped."""
    return 0 in _checks.static_shape(scores.shape)[:2]


def in_range(tags, num_tags, valid, function, name="tag_indices", where="within each length"):
    """Bool: where `tags` are tags; raises (eager code) if one at a `valid`
    step is not. Compiled code cannot raise: there such a tag scores 0."""
    in_range = ops.logical_and(tags >= 0, tags < num_tags)
    known = _checks.known_value(ops.logical_and(valid, ops.logical_not(in_range)))
    if known is not None and np.any(known):
        bad = _checks.known_value(tags)[known]
        raise ValueError(
            f"{function}: `{name}` must be tags in [0, {num_tags}) {where}. "
            f"Received: {name} values {sorted(set(bad.tolist()))[:10]}"
        )
    return in_range


def forward(alpha, edges, active, unary=None, keep=False):
    """The forward algorithm over time-major log-potentials `edges`
    `(time, [batch,] previous, next)`, plus `unary` `(time, batch, next)`
    if given (added after the sum over the previous tag: one pass over
    `(batch, previous, next)` fewer).

    `alpha` `(batch, num_tags)` are the log-scores before the first step;
    `active` `(time, batch)` bool, False where a step is skipped (`alpha`
    passes it unchanged). Returns `alpha` after the last step and, with
    `keep`, the `(time, batch, num_tags)` log-scores after each step.
    """
    xs = (edges, ops.expand_dims(active, -1)) + (() if unary is None else (unary,))

    def step(alpha, x):
        new = ops.logsumexp(ops.expand_dims(alpha, 2) + x[0], axis=1)
        if unary is not None:
            new = new + x[2]
        alpha = ops.where(x[1], new, alpha)
        return alpha, (alpha,) if keep else ()

    outputs = ((keras.backend.standardize_dtype(alpha.dtype), alpha),) if keep else ()
    alpha, kept = _xla.scan(step, alpha, xs, outputs=outputs)
    return (alpha, *kept) if keep else alpha


def backward(edges, active, unary=None):
    """The backward algorithm (`forward`'s arguments): the `(time, batch,
    num_tags)` log-scores of the steps after each step given its tag (0
    after the last)."""
    num_tags = edges.shape[-1]
    beta = ops.zeros((ops.shape(active)[1], num_tags), edges.dtype)
    xs = (edges, ops.expand_dims(active, -1)) + (() if unary is None else (unary,))

    def step(beta, x):
        after = beta if unary is None else beta + x[2]
        new = ops.logsumexp(x[0] + ops.expand_dims(after, -2), axis=-1)
        return ops.where(x[1], new, beta), (beta,)

    dtype = keras.backend.standardize_dtype(beta.dtype)
    _, (betas,) = _xla.scan(step, beta, xs, outputs=((dtype, beta),), reverse=True)
    return betas


def tag_probs(alpha, edges, active, unary=None):
    """`(time, batch, num_tags)` posterior probability of each tag at each
    active step (0 at the others), from the forward and backward
    algorithms (`forward`'s arguments)."""
    last, after = forward(alpha, edges, active, unary, keep=True)
    log_z = ops.logsumexp(last, axis=-1)
    # Normalized at each step (the same as subtracting log_z, exactly):
    # with scores of 1e10 and more, rounding moves the log-scores by more
    # than 1, and the probabilities must still sum to 1.
    probs = ops.softmax(after + backward(edges, active, unary), axis=-1)
    keep = ops.logical_and(active, ops.expand_dims(log_z > _numerics.FLOAT32_MIN, 0))
    return ops.where(ops.expand_dims(keep, -1), probs, 0.0)


def viterbi(alpha, edges, active, unary=None):
    """Viterbi decoding: `forward` with max for log-sum-exp, over
    time-major log-potentials `edges` `(time, [batch,] next, previous)`,
    plus `unary` `(time, batch, next)` if given; `alpha` is the virtual
    start (`virtual_start`), which the first step must leave. Returns
    `(path, alpha)`: the int32 `(batch, time)` best tags (at a skipped
    step, the tag of the next active one) and the final scores. Ties go to
    the smaller tag.
    """
    num_tags = alpha.shape[-1]
    tags_axis = ops.arange(num_tags, dtype="int32")
    # Shapes are made once, outside the loops: on torch, which runs them
    # in Python, each operation inside costs about as much as its work.
    active = ops.expand_dims(active, -1)
    xs = (edges, active, ops.expand_dims(active, -1))
    xs += () if unary is None else (ops.expand_dims(unary, 2),)

    def forward(scores, x):
        # scores[b, 0, j] <- max_i(scores[b, 0, i] + edges[b, j, i]), and
        # the first i that gives it. A skipped step keeps the scores and
        # points each tag to itself.
        candidates = scores + x[0]
        top = ops.max(candidates, axis=-1, keepdims=True)
        came = ops.min(ops.where(candidates >= top, tags_axis, num_tags), axis=-1)
        top = ops.reshape(top, (-1, 1, num_tags))
        if unary is not None:
            top = top + x[3]
        return ops.where(x[2], top, scores), (ops.where(x[1], came, tags_axis),)

    scores, (pointers,) = _xla.scan(
        forward, ops.expand_dims(alpha, 1), xs, outputs=(("int32", alpha),)
    )
    alpha = ops.reshape(scores, (-1, num_tags))
    last = ops.expand_dims(_buffers.first_argmax(alpha, tags_axis, num_tags), 1)

    def backward(tag, x):
        # The tag at step t - 1 is the pointer of step t's tag (a select
        # and a sum, not a gather, for LiteRT's builtins and ONNX).
        tag = ops.sum(ops.where(tag == tags_axis, x[0], 0), axis=-1, keepdims=True)
        return tag, (tag,)

    # The tags of steps -1 (the virtual start) to time - 2, then the last.
    _, (path,) = _xla.scan(
        backward, last, (pointers,), outputs=(("int32", last),), reverse=True
    )
    path = ops.concatenate([path[1:, :, 0], ops.transpose(last)], axis=0)
    return ops.transpose(path), alpha


def virtual_start(batch, num_tags, dtype):
    """The log-scores before the first step: 0 for a virtual tag 0, the
    lowest float32 for the others. A first step whose rows are all the
    same (its unary scores alone) leaves it for every tag alike."""
    before = ops.where(ops.arange(num_tags) == 0, 0.0, _numerics.FLOAT32_MIN)
    return ops.zeros((batch, num_tags), dtype) + ops.cast(before, dtype)


# The potentials the `CRF` layer outputs and `CRFLoss` reads: one float32
# tensor `(batch, time, num_tags + 1, num_tags)` that holds the whole chain
# of each example, so the loss needs nothing but `y_pred` and `y_true`.
# Rows `[:num_tags]` of step t are the log-potentials `[previous, next]`:
# transitions plus the unary scores of step t (plus the start scores at an
# example's first unmasked step, where every row is the same, and the end
# scores at its last). Row `num_tags` is 1 at unmasked steps, 0 at masked
# ones, which the chain skips: masked steps change nothing, wherever they
# are (right or left padding, or holes).


def potentials(unary, transitions, valid, start=None, end=None):
    """The layer's potentials from float32 `(batch, time, num_tags)` unary
    scores, `(num_tags, num_tags)` transitions, `(batch, time)` bool
    `valid` and optional `(num_tags,)` start and end scores."""
    counted = ops.cast(valid, "int32")
    first = ops.logical_and(valid, ops.cumsum(counted, axis=1) == 1)
    last = ops.logical_and(valid, ops.flip(ops.cumsum(ops.flip(counted, 1), axis=1), 1) == 1)
    if start is not None:
        unary = unary + ops.where(ops.expand_dims(first, -1), start, 0.0)
    if end is not None:
        unary = unary + ops.where(ops.expand_dims(last, -1), end, 0.0)
    unary = ops.expand_dims(unary, 2)
    first, valid = (ops.expand_dims(ops.expand_dims(m, -1), -1) for m in (first, valid))
    edges = ops.where(valid, ops.where(first, unary, transitions + unary), 0.0)
    flags = ops.cast(valid, edges.dtype) + ops.zeros_like(unary)
    return ops.concatenate([edges, flags], axis=2)


def _split(potentials):
    """Time-first edges `(time, batch, n, n)`, `valid` `(time, batch)` and
    the log-scores before the first step: 0 for a virtual tag 0, which the
    first unmasked step's identical rows make irrelevant."""
    potentials = _numerics.widen(as_tensor(potentials))
    num_tags = potentials.shape[-1]
    # A split, not a slice: TensorFlow's gradient of a strided slice of a
    # 4-d tensor is several times slower.
    edges, flags = ops.split(ops.transpose(potentials, (1, 0, 2, 3)), [num_tags], axis=2)
    alpha = virtual_start(ops.shape(potentials)[0], num_tags, potentials.dtype)
    return edges, flags[:, :, 0, 0] > 0.5, alpha


def log_likelihood(potentials, tags):
    """`(batch,)` log-likelihood of the `(batch, time)` int tags."""
    if is_empty(potentials):  # no step (or no example): probability 1
        return ops.zeros(ops.shape(potentials)[:1], _numerics.widen(potentials).dtype)
    edges, valid, alpha = _split(potentials)
    # Masked steps' tags are never read, whatever they hold (-1, num_tags).
    tags = ops.where(valid, ops.transpose(ops.cast(tags, "int32")), 0)
    # The gold path's potentials, entry [previous tag, tag] of each step.
    num_tags = edges.shape[-1]
    flat = ops.reshape(edges, (ops.shape(edges)[0], -1, num_tags * num_tags))
    pairs = _previous_tags(tags, valid) * num_tags + tags
    # Picked by a comparison and a select, whose gradient is a select too
    # (a gather's is a scatter, slower in a TensorFlow graph).
    chosen = ops.logical_and(
        ops.expand_dims(valid, -1),
        ops.expand_dims(pairs, -1) == ops.arange(num_tags * num_tags, dtype="int32"),
    )
    score = ops.sum(ops.where(chosen, flat, 0.0), axis=(0, 2))
    return score - _log_norm(edges, valid, alpha)


def _previous_tags(tags, valid):
    """The tag of the last valid step before each step of `(time, batch)`
    `tags` (0 before the first): the valid steps' tags in order (a sort of
    the step indices, valid ones first), read one back."""
    steps = ops.shape(tags)[0]
    index = ops.expand_dims(ops.arange(steps, dtype="int32"), 1)
    order = ops.argsort(ops.where(valid, index, index + steps), axis=0)
    in_order = ops.take_along_axis(tags, ops.cast(order, "int32"), axis=0)
    before = ops.cumsum(ops.cast(valid, "int32"), axis=0) - ops.cast(valid, "int32")
    previous = ops.take_along_axis(in_order, ops.maximum(before - 1, 0), axis=0)
    return ops.where(before > 0, previous, 0)


def _log_norm(edges, valid, alpha):
    """`(batch,)` log-partition of the chain from the log-scores `alpha`.

    Its gradient is the probability of each transition, from the forward
    and backward algorithms (`_transition_probs`): one loop back over the
    steps and one vectorized pass, where the autodiff of the forward loop
    writes each step's gradient through its own loop.
    """

    @_numerics.custom_gradient
    def log_norm(edges):
        last, after = forward(alpha, edges, valid, keep=True)
        log_z = ops.logsumexp(last, axis=-1)

        def grad(upstream):
            before = ops.concatenate([ops.expand_dims(alpha, 0), after[:-1]], axis=0)
            probs = _transition_probs(edges, valid, before, backward(edges, valid), log_z)
            return probs * ops.reshape(upstream, (1, -1, 1, 1))

        return log_z, grad

    return log_norm(edges)


def _transition_probs(edges, valid, alphas, betas, log_z):
    """`(time, batch, previous, next)` posterior probability of each
    transition (0 at skipped steps and where no sequence is possible)."""
    keep = ops.logical_and(valid, ops.expand_dims(log_z > _numerics.FLOAT32_MIN, 0))
    # log_z and the skipped steps folded into the small (time, batch,
    # previous) term (-inf: probability 0; the edges and betas are finite),
    # so the (time, batch, n, n) work is two sums, a min and an exp.
    before = ops.where(ops.expand_dims(keep, -1), alphas - ops.reshape(log_z, (1, -1, 1)), float("-inf"))
    log_p = ops.expand_dims(before, 3) + edges + ops.expand_dims(betas, 2)
    # At most 0: with scores of 1e10 and more, rounding can lift a
    # log-probability above 0, and its exponential to inf.
    return ops.exp(ops.minimum(log_p, 0.0))


def marginals(potentials):
    """The float32 `(batch, time, num_tags)` tag posteriors, 0 at masked
    steps."""
    if is_empty(potentials):  # no step (or no example)
        return ops.zeros(ops.shape(potentials)[:3], _numerics.widen(potentials).dtype)[:, :, :-1]
    edges, valid, alpha = _split(potentials)
    return ops.transpose(tag_probs(alpha, edges, valid), (1, 0, 2))


def decode(potentials):
    """The int32 `(batch, time)` Viterbi tags, 0 at masked steps."""
    if is_empty(potentials):  # no step (or no example)
        return ops.zeros(ops.shape(potentials)[:2], "int32")
    edges, valid, alpha = _split(potentials)
    edges = ops.transpose(edges, (0, 1, 3, 2))  # [next, previous]
    path, _ = viterbi(alpha, edges, valid)
    return ops.where(ops.transpose(valid), path, 0)
