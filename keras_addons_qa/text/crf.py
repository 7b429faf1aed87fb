"""Linear-chain conditional random field functions.

The functions of TensorFlow Addons' `tfa.text` CRF module, with its names,
signatures, return values and edge cases (sequence length 0 and 1, a
single tag), so code written for TensorFlow Addons ports by changing the
import. They are written with `keras.ops` and run on TensorFlow, JAX and
torch, under XLA, with dynamic batch and (on TensorFlow) dynamic length.

Shapes: `inputs` / `potentials` are the unary scores `(batch, time,
num_tags)`; `tag_indices` `(batch, time)` ints; `sequence_lengths`
`(batch,)` ints; `transition_params` `(num_tags, num_tags)`, where entry
`[i, j]` scores tag `i` followed by tag `j`. Steps at or beyond an
example's length change nothing.

The dynamic programs, the forward and backward algorithms and Viterbi,
are written once, in the private `_chain` module the `CRF` layer and
`CRFLoss` share: scans over time, each step O(1) in the length, in the
gradient too (on TensorFlow and JAX the traced graph does not grow with
the length; on torch the loop runs in Python). They compute in at least float32 (float64 stays float64;
the results are cast back to the inputs' dtype). The layer's
log-partition has its gradient from the forward and backward algorithms
(a custom gradient: first order only). Decoding picks back-pointers with
comparisons, selects and sums only, so a model that decodes exports to
SavedModel, LiteRT's builtin ops and ONNX.
"""

import keras
import numpy as np
from keras import ops

from keras_addons_qa import _checks
from keras_addons_qa import _numerics
from keras_addons_qa import _xla
from keras_addons_qa.text import _chain
from keras_addons_qa.text._chain import RULED_OUT  # noqa: F401 (public)
from keras_addons_qa.text._chain import SCORE_LIMIT

_NOT_USED = object()


def _prepare(inputs, transition_params=_NOT_USED, function="", name="inputs"):
    """float32 (or float64) scores, transitions and the inputs' dtype;
    raises if the shapes do not fit (`function` names the caller)."""
    inputs = _chain.as_tensor(inputs, name, function)
    shape = _checks.static_shape(inputs.shape)
    if len(shape) != 3 or shape[-1] is None:
        raise ValueError(
            f"{function}: `{name}` must have shape (batch, time, num_tags), with a known "
            f"number of tags. Received: {name}.shape={shape}"
        )
    dtype = _score_dtype(inputs, name, function)
    scores = _chain.bounded(_numerics.widen(inputs))
    if transition_params is not _NOT_USED:
        transition_params = _transitions(transition_params, shape[-1], function)
    return scores, transition_params, dtype


def _score_dtype(x, name, function):
    """The dtype results take: `x`'s if it holds floats, float32 if ints."""
    dtype = keras.backend.standardize_dtype(x.dtype)
    if "float" in dtype:
        return dtype
    if "int" in dtype:
        return "float32"
    raise ValueError(f"{function}: `{name}` must hold numbers. Received: {name}.dtype={dtype}")


def _transitions(transition_params, num_tags, function):
    transition_params = _chain.as_tensor(transition_params, "transition_params", function)
    _score_dtype(transition_params, "transition_params", function)
    transitions = _numerics.widen(transition_params)
    shape = _checks.static_shape(transitions.shape)
    if shape != (num_tags, num_tags):
        raise ValueError(
            f"{function}: `transition_params` must have shape (num_tags, num_tags) = "
            f"({num_tags}, {num_tags}). Received: transition_params.shape={shape}"
        )
    return _chain.bounded(transitions)


def _lengths(sequence_lengths, scores=None, function=""):
    """int32 `(batch,)` lengths; raises on a shape that does not fit the
    scores' (or tags') batch, a dtype that is not a number, and (eager
    code) a negative or fractional length. A length past the steps counts
    them all, as in TensorFlow Addons."""
    given = _chain.as_tensor(sequence_lengths, "sequence_lengths", function)
    dtype = keras.backend.standardize_dtype(given.dtype)
    shape = _checks.static_shape(given.shape)
    batch = None if scores is None else _checks.static_shape(scores.shape)[0]
    if len(shape) != 1 or None not in (shape[0], batch) and shape[0] != batch:
        raise ValueError(
            f"{function}: `sequence_lengths` must have shape (batch,) = ({batch},). "
            f"Received: sequence_lengths.shape={shape}"
        )
    if "int" not in dtype and "float" not in dtype:
        raise ValueError(
            f"{function}: `sequence_lengths` must hold ints. Received: sequence_lengths.dtype={dtype}"
        )
    known = _checks.known_value(given)
    if known is not None and (np.any(known < 0) or np.any(known != np.floor(known))):
        raise ValueError(
            f"{function}: `sequence_lengths` must be whole numbers >= 0. "
            f"Received: sequence_lengths={known.tolist()}"
        )
    return ops.cast(given, "int32")


def _tags(tag_indices, scores, function, name="tag_indices"):
    """int32 `(batch, time)` tags; raises on another batch size, fewer
    steps than the scores, another rank, bool tags and (eager code) tags
    that are not whole numbers (compiled code truncates them)."""
    tags = _chain.as_tensor(tag_indices, name, function)
    dtype = keras.backend.standardize_dtype(tags.dtype)
    shape = _checks.static_shape(tags.shape)
    batch, steps = _checks.static_shape(scores.shape)[:2]
    if (len(shape) != 2 or None not in (shape[0], batch) and shape[0] != batch
            or None not in (shape[1], steps) and shape[1] < steps):
        raise ValueError(
            f"{function}: `{name}` must have shape (batch, time) with batch={batch}, "
            f"time >= {steps}. Received: {name}.shape={shape}"
        )
    if "int" not in dtype and "float" not in dtype:
        raise ValueError(f"{function}: `{name}` must hold int tags. Received: {name}.dtype={dtype}")
    if "float" in dtype:
        _checks.check_whole(function, name, tags)
    return ops.cast(tags, "int32")


def _valid(scores, lengths):
    """`(batch, time)` bool: the steps inside each example's length."""
    steps = ops.arange(ops.shape(scores)[1], dtype="int32")
    return ops.expand_dims(steps, 0) < ops.expand_dims(lengths, 1)


def _with_ends(scores, lengths, start, end, function=""):
    """float32 unary `scores` plus the `start` scores at the first step and
    the `end` scores at each example's last (neither for a length of 0)."""
    steps = ops.expand_dims(ops.arange(ops.shape(scores)[1], dtype="int32"), 0)
    lengths = ops.cast(lengths, "int32")
    num_tags = scores.shape[-1]
    for at, extra, name in (
        (ops.logical_and(steps == 0, ops.expand_dims(lengths > 0, 1)), start, "start_transitions"),
        (steps == ops.expand_dims(lengths - 1, 1), end, "end_transitions"),
    ):
        if extra is not None:
            extra = _chain.as_tensor(extra, name, function)
            _score_dtype(extra, name, function)
            _checks.check_shape(name, extra.shape, (num_tags,))
            extra = _chain.bounded(_numerics.widen(extra))
            scores = scores + ops.where(ops.expand_dims(at, -1), ops.cast(extra, scores.dtype), 0.0)
    return scores


def crf_unary_score(tag_indices, sequence_lengths, inputs):
    """Sum of the unary scores of the tags within each length.

    Args:
        tag_indices: `(batch, time)` int tags (steps beyond `inputs`'
            are ignored, as in TensorFlow Addons).
        sequence_lengths: `(batch,)` lengths.
        inputs: `(batch, time, num_tags)` unary scores.

    Returns:
        `(batch,)`: each example's sum (0 for a length of 0).
    """
    function = "crf_unary_score"
    scores, _, dtype = _prepare(inputs, function=function)
    # Tags beyond the inputs' steps are ignored, as in TensorFlow Addons.
    tags = _tags(tag_indices, scores, function)[:, : ops.shape(scores)[1]]
    valid = _valid(scores, _lengths(sequence_lengths, scores, function))
    valid = ops.logical_and(valid, _chain.in_range(tags, scores.shape[-1], valid, function))
    return ops.cast(_unary(scores, tags, valid), dtype)


def _unary(scores, tags, counted):
    """`crf_unary_score` of checked tags, summed where `counted`."""
    tags = ops.clip(tags, 0, scores.shape[-1] - 1)
    picked = ops.take_along_axis(scores, ops.expand_dims(tags, -1), axis=-1)[..., 0]
    return ops.sum(ops.where(counted, picked, 0.0), axis=-1)


def crf_binary_score(tag_indices, sequence_lengths, transition_params):
    """Sum of the transition scores between consecutive tags.

    Args:
        tag_indices: `(batch, time)` int tags.
        sequence_lengths: `(batch,)` lengths.
        transition_params: `(num_tags, num_tags)` transition scores, from
            row tag to column tag.

    Returns:
        `(batch,)`: each example's sum over its `length - 1` transitions.
    """
    function = "crf_binary_score"
    given = _chain.as_tensor(transition_params, "transition_params", function)
    dtype = _score_dtype(given, "transition_params", function)
    num_tags = _checks.static_shape(given.shape)[-1:] or (None,)
    transitions = _transitions(given, num_tags[0], function)
    tags = _chain.as_tensor(tag_indices, "tag_indices", function)
    tags = _tags(tags, tags, function)
    lengths = _lengths(sequence_lengths, tags, function)
    valid = ops.expand_dims(ops.arange(ops.shape(tags)[1], dtype="int32"), 0) < ops.expand_dims(lengths, 1)
    in_range = _chain.in_range(tags, transitions.shape[0], valid, function)
    return ops.cast(_binary(transitions, tags, valid, in_range), dtype)


def _binary(transitions, tags, valid, in_range):
    """`crf_binary_score` of checked tags: pair (t, t + 1) counts when
    t + 1 is `valid` and both are tags (`in_range`)."""
    num_tags = transitions.shape[0]
    tags = ops.clip(tags, 0, num_tags - 1)
    pairs = tags[:, :-1] * num_tags + tags[:, 1:]
    picked = ops.take(ops.reshape(transitions, (-1,)), pairs)
    valid = ops.logical_and(valid[:, 1:], ops.logical_and(in_range[:, :-1], in_range[:, 1:]))
    return ops.sum(ops.where(valid, picked, 0.0), axis=-1)


def crf_sequence_score(inputs, tag_indices, sequence_lengths, transition_params,
                       start_transitions=None, end_transitions=None):
    """The unnormalized score of each tag sequence: the sum of its unary
    scores and of its transitions (and of the start and end scores of its
    first and last tag, if given), within each length.

    Args:
        inputs: `(batch, time, num_tags)` unary scores.
        tag_indices: `(batch, time)` int tags.
        sequence_lengths: `(batch,)` lengths.
        transition_params: `(num_tags, num_tags)` transition scores.
        start_transitions: Optional `(num_tags,)` scores of the first tag.
        end_transitions: Optional `(num_tags,)` scores of the last tag.

    Returns:
        `(batch,)` scores (0 for a length of 0).
    """
    function = "crf_sequence_score"
    scores, transitions, dtype = _prepare(inputs, transition_params, function)
    tags = _tags(tag_indices, scores, function)
    lengths = _lengths(sequence_lengths, scores, function)
    scores = _with_ends(scores, lengths, start_transitions, end_transitions, function)
    return ops.cast(_sequence_score(scores, tags, lengths, transitions, function), dtype)


def _sequence_score(scores, tags, lengths, transitions, function):
    """`crf_sequence_score` of prepared scores (start and end included)."""
    tags = tags[:, : ops.shape(scores)[1]]
    valid = _valid(scores, lengths)
    in_range = _chain.in_range(tags, scores.shape[-1], valid, function)
    unary = _unary(scores, tags, ops.logical_and(valid, in_range))
    return unary + _binary(transitions, tags, valid, in_range)


def crf_forward(inputs, state, transition_params, sequence_lengths):
    """The forward algorithm, from the first step's log-scores on.

    Args:
        inputs: `(batch, time - 1, num_tags)` unary scores of the steps
            after the first.
        state: `(batch, num_tags)` log-scores of the first step.
        transition_params: `(num_tags, num_tags)` transition scores.
        sequence_lengths: `(batch,)` lengths, the first step included.

    Returns:
        `(batch, num_tags)`: the log-sum-exp of the scores of the paths
        ending in each tag at each example's last step (`state` where the
        length is 0 or 1).
    """
    scores, transitions, dtype = _prepare(inputs, transition_params, "crf_forward", "inputs")
    state = _chain.as_tensor(state, "state", "crf_forward")
    _checks.check_shape("state", state.shape, (scores.shape[0], scores.shape[-1]))
    lengths = _lengths(sequence_lengths, scores, "crf_forward")
    return ops.cast(_forward_from(_chain.bounded(_numerics.widen(state)), scores, transitions, lengths), dtype)


def _forward_from(alpha, scores, transitions, lengths):
    """`crf_forward` of prepared tensors."""
    if scores.shape[1] == 0:  # one step in all: nothing to loop over
        return alpha
    steps = ops.shape(scores)[1]
    return _chain.forward(
        alpha,
        ops.broadcast_to(transitions, (steps,) + tuple(transitions.shape)),
        ops.transpose(_valid(scores, lengths - 1)),
        unary=ops.transpose(scores, (1, 0, 2)),
    )


def crf_log_norm(inputs, sequence_lengths, transition_params,
                 start_transitions=None, end_transitions=None):
    """The log of the partition function: log-sum-exp of the scores of all
    tag sequences of each length.

    Args:
        inputs: `(batch, time, num_tags)` unary scores.
        sequence_lengths: `(batch,)` lengths.
        transition_params: `(num_tags, num_tags)` transition scores.
        start_transitions: Optional `(num_tags,)` scores of the first tag.
        end_transitions: Optional `(num_tags,)` scores of the last tag.

    Returns:
        `(batch,)` log-partitions (0 for a length of 0).
    """
    scores, transitions, dtype = _prepare(inputs, transition_params, "crf_log_norm", "inputs")
    lengths = _lengths(sequence_lengths, scores, "crf_log_norm")
    if _chain.is_empty(scores):  # no step (or no example): one empty sequence, of score 0
        return ops.zeros(ops.shape(scores)[:1], dtype)
    scores = _with_ends(scores, lengths, start_transitions, end_transitions, "crf_log_norm")
    return ops.cast(_log_norm(scores, lengths, transitions), dtype)


def _log_norm(scores, lengths, transitions):
    """`crf_log_norm` of prepared scores (start and end included)."""
    alpha = _forward_from(scores[:, 0], scores[:, 1:], transitions, lengths)
    return ops.where(lengths <= 0, 0.0, ops.logsumexp(alpha, axis=1))


def crf_log_likelihood(inputs, tag_indices, sequence_lengths, transition_params=None,
                       start_transitions=None, end_transitions=None):
    """The log-likelihood of each tag sequence under the CRF.

    Args:
        inputs: `(batch, time, num_tags)` unary scores.
        tag_indices: `(batch, time)` gold tags.
        sequence_lengths: `(batch,)` lengths.
        transition_params: `(num_tags, num_tags)` transition scores; if
            None, a new `keras.Variable` initialized with Glorot uniform.
        start_transitions: Optional `(num_tags,)` scores of each tag as
            the first of a sequence (pytorch-crf's `start_transitions`).
        end_transitions: Optional `(num_tags,)` scores of each tag as the
            last of a sequence.

    Returns:
        `(log_likelihood, transition_params)`, the first `(batch,)`.
    """
    function = "crf_log_likelihood"
    inputs = _chain.as_tensor(inputs, "inputs", function)
    if transition_params is None:
        num_tags = inputs.shape[-1]
        transition_params = keras.Variable(
            keras.initializers.GlorotUniform()((num_tags, num_tags)), name="transitions"
        )
    # Checked and prepared once for both halves.
    scores, transitions, dtype = _prepare(inputs, transition_params, function)
    tags = _tags(tag_indices, scores, function)
    lengths = _lengths(sequence_lengths, scores, function)
    if _chain.is_empty(scores):  # no step (or no example): probability 1
        return ops.zeros(ops.shape(scores)[:1], dtype), transition_params
    scores = _with_ends(scores, lengths, start_transitions, end_transitions, function)
    score = _sequence_score(scores, tags, lengths, transitions, function)
    return ops.cast(score - _log_norm(scores, lengths, transitions), dtype), transition_params


def crf_marginals(inputs, sequence_lengths, transition_params,
                  start_transitions=None, end_transitions=None):
    """The posterior probability of each tag at each step, `(batch, time,
    num_tags)`: the share of the probability of all tag sequences that
    pass through that tag there (forward-backward). Each step within an
    example's length sums to 1; the steps beyond it are 0. For confidence
    scores, calibration and active learning.

    Args:
        inputs: `(batch, time, num_tags)` unary scores.
        sequence_lengths: `(batch,)` lengths.
        transition_params: `(num_tags, num_tags)` transition scores.
        start_transitions: Optional `(num_tags,)` scores of the first tag.
        end_transitions: Optional `(num_tags,)` scores of the last tag.

    Returns:
        `(batch, time, num_tags)` probabilities.
    """
    scores, transitions, dtype = _prepare(inputs, transition_params, "crf_marginals", "inputs")
    lengths = _lengths(sequence_lengths, scores, "crf_marginals")
    if _chain.is_empty(scores):  # no step (or no example)
        return ops.zeros(ops.shape(scores), dtype)
    scores = _with_ends(scores, lengths, start_transitions, end_transitions, "crf_marginals")
    # From the virtual start, whose first step has no transition.
    chained = ops.arange(ops.shape(scores)[1]) > 0
    probs = _chain.tag_probs(
        _chain.virtual_start(ops.shape(scores)[0], scores.shape[-1], scores.dtype),
        ops.where(ops.reshape(chained, (-1, 1, 1)), transitions, 0.0),
        ops.transpose(_valid(scores, lengths)),
        unary=ops.transpose(scores, (1, 0, 2)),
    )
    return ops.cast(ops.transpose(probs, (1, 0, 2)), dtype)


def crf_filtered_inputs(inputs, tag_bitmap):
    """`inputs` with the tags that `tag_bitmap` rules out set to -inf.

    Args:
        inputs: `(batch, time, num_tags)` unary scores (int inputs become
            float32 scores).
        tag_bitmap: bool, `inputs`' shape: True where a tag is allowed.

    Returns:
        The filtered scores, `inputs`' shape.
    """
    inputs = _chain.as_tensor(inputs, "inputs", "crf_filtered_inputs")
    inputs = ops.cast(inputs, _score_dtype(inputs, "inputs", "crf_filtered_inputs"))
    tag_bitmap = _chain.as_tensor(tag_bitmap, "tag_bitmap", "crf_filtered_inputs")
    _checks.check_shape("tag_bitmap", tag_bitmap.shape, inputs.shape)
    return ops.where(ops.cast(tag_bitmap, "bool"), inputs, ops.cast(float("-inf"), inputs.dtype))


def crf_multitag_sequence_score(inputs, tag_bitmap, sequence_lengths, transition_params,
                                start_transitions=None, end_transitions=None):
    """log-sum-exp of the scores of every tag sequence that `tag_bitmap`
    allows (several allowed tags per step).

    Args:
        inputs: `(batch, time, num_tags)` unary scores.
        tag_bitmap: bool, `inputs`' shape: True where a tag is allowed.
        sequence_lengths: `(batch,)` lengths.
        transition_params: `(num_tags, num_tags)` transition scores.
        start_transitions: Optional `(num_tags,)` scores of the first tag.
        end_transitions: Optional `(num_tags,)` scores of the last tag.

    Returns:
        `(batch,)` scores.
    """
    return crf_log_norm(crf_filtered_inputs(inputs, tag_bitmap), sequence_lengths, transition_params,
                        start_transitions, end_transitions)


def crf_decode(potentials, transition_params, sequence_length,
               start_transitions=None, end_transitions=None):
    """The highest-scoring tag sequence of each example (Viterbi).

    Args:
        potentials: `(batch, time, num_tags)` unary scores.
        transition_params: `(num_tags, num_tags)` transition scores.
        sequence_length: `(batch,)` lengths.
        start_transitions: Optional `(num_tags,)` scores of the first tag.
        end_transitions: Optional `(num_tags,)` scores of the last tag.

    Returns:
        `(decode_tags, best_score)`: int32 `(batch, time)` tags (0 beyond
        each length; ties go to the smaller tag) and the `(batch,)` score
        of the best sequence.
    """
    scores, transitions, dtype = _prepare(potentials, transition_params, "crf_decode", "potentials")
    lengths = _lengths(sequence_length, scores, "crf_decode")
    if _chain.is_empty(scores):  # no step (or no example): the empty sequence, of score 0
        return ops.zeros(ops.shape(scores)[:2], "int32"), ops.zeros(ops.shape(scores)[:1], dtype)
    scores = _with_ends(scores, lengths, start_transitions, end_transitions, "crf_decode")
    valid = _valid(scores, lengths)
    # From the virtual start, the first step is always taken (a length of 0
    # scores the first step's best tag, as in TensorFlow Addons) and has no
    # transition.
    # Each step's transitions, [next, previous], made once (a small
    # `(time, num_tags, num_tags)`): a select inside the loop costs more.
    chained = ops.arange(ops.shape(scores)[1]) > 0
    into = ops.where(ops.reshape(chained, (-1, 1, 1)), ops.transpose(transitions), 0.0)
    path, alpha = _chain.viterbi(
        _chain.virtual_start(ops.shape(scores)[0], scores.shape[-1], scores.dtype),
        into,
        ops.transpose(ops.logical_or(valid, ops.expand_dims(ops.logical_not(chained), 0))),
        unary=ops.transpose(scores, (1, 0, 2)),
    )
    path = ops.where(valid, path, 0)
    return path, ops.cast(ops.max(alpha, axis=-1), dtype)


def crf_top_k_decode(potentials, transition_params, sequence_length, k,
                     start_transitions=None, end_transitions=None):
    """The `k` highest-scoring tag sequences of each example, best first.

    k-best Viterbi: each tag keeps the `k` best partial sequences that end
    in it. Exact; the first sequence is `crf_decode`'s, and ties go, as
    there, to the smaller tags. An example with fewer than `k` sequences
    (a short one, or one transitions of -inf rule out) fills the rest with
    score -inf and tags 0; with ruled-out transitions scored -1e30, as
    `allowed_transitions`' example does, the sequences that break them
    come next, with scores near -1e30. A length of 0 scores the first
    step, as `crf_decode` does (TensorFlow Addons' convention).

    Args:
        potentials: `(batch, time, num_tags)` unary scores.
        transition_params: `(num_tags, num_tags)` transition scores.
        sequence_length: `(batch,)` lengths.
        k: Number of sequences, an int >= 1.
        start_transitions: Optional `(num_tags,)` scores of the first tag.
        end_transitions: Optional `(num_tags,)` scores of the last tag.

    Returns:
        `(tags, scores)`: int32 `(batch, k, time)` tags (0 beyond each
        length, and for the -inf fillers) and their `(batch, k)` scores.
    """
    k = _checks.integer_at_least("k", k, 1)
    scores, transitions, dtype = _prepare(potentials, transition_params, "crf_top_k_decode", "potentials")
    lengths = _lengths(sequence_length, scores, "crf_top_k_decode")
    if _chain.is_empty(scores):  # no step (or no example): the empty sequence, of score 0, and no other
        batch, steps = ops.shape(scores)[0], ops.shape(scores)[1]
        first = ops.cast(ops.where(ops.arange(k) == 0, 0.0, float("-inf")), dtype)
        return ops.zeros((batch, k, steps), "int32"), ops.zeros((batch, 1), dtype) + first
    scores = _with_ends(scores, lengths, start_transitions, end_transitions, "crf_top_k_decode")
    valid = _valid(scores, lengths)
    batch, num_tags = ops.shape(scores)[0], scores.shape[-1]
    states = num_tags * k  # (tag, rank) pairs, flattened tag-major
    state_axis = ops.arange(states, dtype="int32")
    # The virtual start: tag 0, rank 0; nothing else exists yet.
    alpha = ops.where(state_axis == 0, 0.0, float("-inf"))
    alpha = ops.zeros((batch, 1, states), scores.dtype) + ops.cast(alpha, scores.dtype)
    chained = ops.arange(ops.shape(scores)[1]) > 0
    # [next, previous state]: step 0 has no transitions.
    into = ops.repeat(ops.transpose(transitions), k, axis=1)
    into = ops.where(ops.reshape(chained, (-1, 1, 1)), into, 0.0)
    active = ops.logical_or(valid, ops.expand_dims(ops.logical_not(chained), 0))
    xs = (into, ops.expand_dims(ops.transpose(scores, (1, 0, 2)), 2),
          ops.reshape(ops.transpose(active), (-1, batch, 1, 1)))

    def best(values):
        """The `k` largest of the last axis and their first positions."""
        tops, picks = [], []
        for _ in range(k):
            top = ops.max(values, axis=-1, keepdims=True)
            pick = ops.min(ops.where(values >= top, state_axis, states), axis=-1, keepdims=True)
            values = ops.where(state_axis == pick, float("-inf"), values)
            tops.append(top)
            picks.append(pick)
        return ops.concatenate(tops, -1), ops.concatenate(picks, -1)

    def forward(alpha, x):
        # For each next tag, the k best (previous state + transition).
        top, came = best(alpha + x[0])  # (batch, tags, k)
        top = ops.reshape(top + ops.reshape(x[1], (-1, num_tags, 1)), (-1, 1, states))
        came = ops.reshape(came, (-1, states))
        # A skipped step keeps each state where it is.
        return ops.where(x[2], top, alpha), (ops.where(x[2][:, 0], came, state_axis),)

    alpha, (pointers,) = _xla.scan(forward, alpha, xs, outputs=(("int32", alpha[:, 0]),))
    final, last = best(alpha[:, 0])  # (batch, k)

    def backward(state, x):
        state = ops.sum(ops.where(ops.expand_dims(state, -1) == state_axis,
                                  ops.expand_dims(x[0], 1), 0), axis=-1)
        return state, (state,)

    _, (path,) = _xla.scan(backward, last, (pointers,), outputs=(("int32", last),), reverse=True)
    path = ops.concatenate([path[1:], ops.expand_dims(last, 0)], axis=0) // k  # states to tags
    path = ops.transpose(path, (1, 2, 0))
    exists = ops.expand_dims(final > float("-inf"), -1)
    path = ops.where(ops.logical_and(exists, ops.expand_dims(valid, 1)), path, 0)
    return path, ops.cast(final, dtype)


def crf_constrained_decode(potentials, tag_bitmap, transition_params, sequence_length,
                           start_transitions=None, end_transitions=None):
    """`crf_decode` among the tags that `tag_bitmap` allows at each step.

    Args:
        potentials: `(batch, time, num_tags)` unary scores.
        tag_bitmap: bool, `potentials`' shape: True where a tag is allowed.
        transition_params: `(num_tags, num_tags)` transition scores.
        sequence_length: `(batch,)` lengths.
        start_transitions: Optional `(num_tags,)` scores of the first tag.
        end_transitions: Optional `(num_tags,)` scores of the last tag.

    Returns:
        `(decode_tags, best_score)`, as `crf_decode` returns them.
    """
    return crf_decode(crf_filtered_inputs(potentials, tag_bitmap), transition_params, sequence_length,
                      start_transitions, end_transitions)


def viterbi_decode(score, transition_params):
    """Viterbi decoding of one sequence, in NumPy (outside any graph).

    Scores are bounded as in the tensor functions: clipped to +-1e20, a NaN
    counting as the lowest.

    Args:
        score: `(time, num_tags)` unary scores.
        transition_params: `(num_tags, num_tags)` transition scores.

    Returns:
        `(viterbi, viterbi_score)`: the best tags as a list of ints, and
        their score.
    """
    score = np.asarray(score, dtype="float64")
    transitions = np.asarray(transition_params, dtype="float64")
    if score.ndim != 2 or score.shape[0] == 0:
        raise ValueError(
            "viterbi_decode: `score` must have shape (time, num_tags), time >= 1. "
            f"Received: score.shape={score.shape}"
        )
    num_tags = score.shape[1]
    if transitions.shape != (num_tags, num_tags):
        raise ValueError(
            f"viterbi_decode: `transition_params` must have shape (num_tags, num_tags) = "
            f"({num_tags}, {num_tags}). Received: transition_params.shape={transitions.shape}"
        )
    # Bounded as the tensor functions are (NaN the lowest score).
    score, transitions = (
        np.where(x >= -SCORE_LIMIT, np.minimum(x, SCORE_LIMIT), -SCORE_LIMIT) for x in (score, transitions)
    )
    best = score[0]
    pointers = []
    for unary in score[1:]:
        candidates = best[:, None] + transitions  # [previous, next]
        pointers.append(np.argmax(candidates, axis=0))
        best = unary + np.max(candidates, axis=0)
    viterbi = [int(np.argmax(best))]
    for came in pointers[::-1]:
        viterbi.append(int(came[viterbi[-1]]))
    return viterbi[::-1], np.max(best)


