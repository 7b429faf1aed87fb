"""The CRF functions of `keras_addons_qa.text` against brute force."""

import itertools

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from keras_addons_qa import text
from tests import harness


def _all_paths(scores, transitions, length, start=None, end=None):
    """Every tag sequence of `length` and its score."""
    num_tags = scores.shape[-1]
    for path in itertools.product(range(num_tags), repeat=length):
        unary = sum(scores[t, tag] for t, tag in enumerate(path))
        binary = sum(transitions[a, b] for a, b in zip(path, path[1:]))
        if path and start is not None:
            binary += start[path[0]] + end[path[-1]]
        yield path, float(unary + binary)


def _case(seed, batch, steps, num_tags, with_zero=True):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(batch, steps, num_tags)).astype("float32") * 2
    transitions = rng.normal(size=(num_tags, num_tags)).astype("float32")
    lengths = rng.integers(0 if with_zero else 1, steps + 1, size=batch)
    return scores, transitions, lengths


@settings(max_examples=harness.examples(40), deadline=None)
@given(
    steps=st.integers(1, 4),
    num_tags=st.integers(1, 4),
    boundaries=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_log_norm_score_and_decode_equal_brute_force(steps, num_tags, boundaries, seed):
    scores, transitions, lengths = _case(seed, 3, steps, num_tags)
    rng = np.random.default_rng(seed + 1)
    tags = rng.integers(0, num_tags, size=(3, steps))
    ends = {}
    if boundaries:  # start and end scores, as pytorch-crf's
        ends = dict(zip(("start_transitions", "end_transitions"), rng.normal(size=(2, num_tags)).astype("float32")))
    log_norm = harness.to_numpy(text.crf_log_norm(scores, lengths, transitions, **ends))
    score = harness.to_numpy(text.crf_sequence_score(scores, tags, lengths, transitions, **ends))
    likelihood = harness.to_numpy(text.crf_log_likelihood(scores, tags, lengths, transitions, **ends)[0])
    decoded, best = (harness.to_numpy(t) for t in text.crf_decode(scores, transitions, lengths, **ends))
    marginals = harness.to_numpy(text.crf_marginals(scores, lengths, transitions, **ends))
    assert decoded.dtype == np.int32 and decoded.shape == (3, steps)
    assert marginals.shape == (3, steps, num_tags)
    for b, length in enumerate(lengths):
        paths = list(_all_paths(scores[b], transitions, length, *ends.values()))
        values = np.array([v for _, v in paths])
        assert np.all(marginals[b, length:] == 0)
        if length == 0:
            assert log_norm[b] == 0 and score[b] == 0
            assert np.all(decoded[b] == 0)
            continue
        probs = np.exp(values - np.logaddexp.reduce(values))
        expected = np.zeros((length, num_tags))
        for (path, _), p in zip(paths, probs):
            expected[np.arange(length), list(path)] += p
        np.testing.assert_allclose(marginals[b, :length], expected, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(log_norm[b], np.logaddexp.reduce(values), rtol=1e-5, atol=1e-5)
        own = dict(paths)[tuple(tags[b, :length])]
        np.testing.assert_allclose(score[b], own, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(likelihood[b], own - np.logaddexp.reduce(values), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(best[b], values.max(), rtol=1e-5, atol=1e-5)
        path = tuple(decoded[b, :length])
        np.testing.assert_allclose(dict(paths)[path], values.max(), rtol=1e-5, atol=1e-5)
        assert np.all(decoded[b, length:] == 0)  # nothing beyond the length


@settings(max_examples=harness.examples(40), deadline=None)
@given(
    steps=st.integers(1, 4),
    num_tags=st.integers(1, 3),
    k=st.integers(1, 6),
    ties=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_top_k_decode_equals_brute_force(steps, num_tags, k, ties, seed):
    scores, transitions, lengths = _case(seed, 3, steps, num_tags)
    if ties:  # many equal scores: the order among them is the 1-best's
        scores, transitions = np.round(scores), np.round(transitions)
    tags, best = (harness.to_numpy(t) for t in text.crf_top_k_decode(scores, transitions, lengths, k))
    first, first_score = (harness.to_numpy(t) for t in text.crf_decode(scores, transitions, lengths))
    assert tags.shape == (3, k, steps) and tags.dtype == np.int32 and best.shape == (3, k)
    np.testing.assert_array_equal(tags[:, 0], first)
    np.testing.assert_allclose(best[:, 0], first_score, rtol=1e-6)
    for b, length in enumerate(lengths):
        # A length of 0 scores its first step, as crf_decode does.
        paths = dict(_all_paths(scores[b], transitions, max(length, 1)))
        values = sorted(paths.values(), reverse=True)[:k]
        found = len(values)
        np.testing.assert_allclose(best[b, :found], values, rtol=1e-5, atol=1e-5)
        assert np.all(best[b, found:] == -np.inf) and np.all(tags[b, found:] == 0)
        assert np.all(tags[b, :, length:] == 0)
        if length:
            seen = [tuple(p[:length]) for p in tags[b, :found]]
            assert len(set(seen)) == found  # distinct sequences
            for path, value in zip(seen, best[b]):
                np.testing.assert_allclose(paths[path], value, rtol=1e-5, atol=1e-5)


def test_top_k_decode_errors():
    scores, transitions, lengths = _case(1, 2, 3, 2)
    with pytest.raises(ValueError, match="Received: k=0"):
        text.crf_top_k_decode(scores, transitions, lengths, 0)


@pytest.mark.skipif(harness.BACKEND != "torch", reason="pytorch-crf runs on torch tensors")
def test_equals_pytorch_crf_in_values_gradients_and_paths():
    torchcrf = pytest.importorskip("torchcrf", reason="pytorch-crf is installed by make test-backends")
    import torch

    rng = np.random.default_rng(7)
    batch, steps, num_tags = 6, 9, 5
    emissions = rng.normal(size=(batch, steps, num_tags)).astype("float32") * 2
    tags = rng.integers(0, num_tags, size=(batch, steps))
    lengths = np.array([9, 9, 5, 1, 7, 2])
    peer = torchcrf.CRF(num_tags, batch_first=True)
    ours = [torch.tensor(emissions, requires_grad=True)] + [
        p.detach().clone().requires_grad_(True)
        for p in (peer.transitions, peer.start_transitions, peer.end_transitions)
    ]
    theirs = torch.tensor(emissions, requires_grad=True)
    mask = torch.arange(steps)[None] < torch.tensor(lengths)[:, None]
    value_theirs = peer(theirs, torch.tensor(tags), mask, reduction="none")
    value_ours, _ = text.crf_log_likelihood(
        ours[0], torch.tensor(tags), torch.tensor(lengths), ours[1],
        start_transitions=ours[2], end_transitions=ours[3],
    )
    np.testing.assert_allclose(value_ours.detach().numpy(), value_theirs.detach().numpy(), rtol=1e-5, atol=1e-5)
    value_ours.sum().backward()
    value_theirs.sum().backward()
    for mine, other in zip(ours, (theirs, peer.transitions, peer.start_transitions, peer.end_transitions)):
        np.testing.assert_allclose(mine.grad.numpy(), other.grad.numpy(), rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        decoded, _ = text.crf_decode(
            ours[0], ours[1], torch.tensor(lengths), start_transitions=ours[2], end_transitions=ours[3]
        )
        for row, length, path in zip(decoded.numpy(), lengths, peer.decode(theirs, mask)):
            assert list(row[:length]) == path


def test_log_likelihoods_of_all_sequences_sum_to_one():
    scores, transitions, _ = _case(1, 1, 4, 3)
    lengths = np.array([3])
    likelihoods = []
    for path in itertools.product(range(3), repeat=3):
        tags = np.array([list(path) + [0]])
        value, _ = text.crf_log_likelihood(scores, tags, lengths, transitions)
        likelihoods.append(float(harness.to_numpy(value)[0]))
    np.testing.assert_allclose(np.logaddexp.reduce(likelihoods), 0.0, atol=1e-5)
    # Without transitions, a new Glorot-initialized variable comes back.
    _, made = text.crf_log_likelihood(scores, np.zeros((1, 4), "int64"), lengths)
    assert isinstance(made, keras.Variable) and tuple(made.shape) == (3, 3)


def test_decode_ties_go_to_the_smaller_tag_and_match_numpy_viterbi():
    scores = np.zeros((1, 5, 3), "float32")
    transitions = np.zeros((3, 3), "float32")
    tags, best = text.crf_decode(scores, transitions, np.array([5]))
    assert harness.to_numpy(tags).tolist() == [[0, 0, 0, 0, 0]]
    scores, transitions, _ = _case(3, 1, 6, 4)
    path, score = text.viterbi_decode(scores[0], transitions)
    tags, best = text.crf_decode(scores, transitions, np.array([6]))
    assert harness.to_numpy(tags)[0].tolist() == path
    np.testing.assert_allclose(harness.to_numpy(best)[0], score, rtol=1e-6)


def test_filtered_and_constrained():
    scores, transitions, lengths = _case(4, 2, 4, 3, with_zero=False)
    bitmap = np.random.default_rng(5).random((2, 4, 3)) > 0.4
    bitmap[..., 0] = True  # at least one allowed tag per step
    filtered = harness.to_numpy(text.crf_filtered_inputs(scores, bitmap))
    assert np.all(np.isneginf(filtered[~bitmap])) and np.all(filtered[bitmap] == scores[bitmap])
    tags, _ = text.crf_constrained_decode(scores, bitmap, transitions, lengths)
    tags = harness.to_numpy(tags)
    for b, length in enumerate(lengths):
        assert all(bitmap[b, t, tags[b, t]] for t in range(length))
    multitag = harness.to_numpy(text.crf_multitag_sequence_score(scores, bitmap, lengths, transitions))
    for b, length in enumerate(lengths):
        values = [v for p, v in _all_paths(scores[b], transitions, length)
                  if all(bitmap[b, t, tag] for t, tag in enumerate(p))]
        np.testing.assert_allclose(multitag[b], np.logaddexp.reduce(values), rtol=1e-5)


def test_gradients_are_finite_and_masked_steps_get_none():
    scores, transitions, _ = _case(6, 2, 5, 4, with_zero=False)
    lengths = np.array([5, 2])
    tags = np.random.default_rng(7).integers(0, 4, size=(2, 5))
    x, t = keras.Variable(scores), keras.Variable(transitions)

    def loss():
        value, _ = text.crf_log_likelihood(x.value, tags, lengths, t.value)
        return -keras.ops.sum(value)

    _, (d_x, d_t) = harness.gradients(loss, [x, t])
    d_x, d_t = harness.to_numpy(d_x), harness.to_numpy(d_t)
    harness.assert_finite(d_x, d_t)
    assert np.all(d_x[1, 2:] == 0)  # beyond the second example's length


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_half_precision_inputs_compute_in_float32(policy):
    scores, transitions, lengths = _case(8, 2, 6, 5, with_zero=False)
    dtype = "float16" if policy == "mixed_float16" else "bfloat16"
    half = keras.ops.cast(scores * 10, dtype)  # large scores: float16 sums overflow
    log_norm = text.crf_log_norm(half, lengths, transitions)
    assert keras.backend.standardize_dtype(log_norm.dtype) == dtype
    want = harness.to_numpy(text.crf_log_norm(harness.to_numpy(keras.ops.cast(half, "float32")), lengths, transitions))
    np.testing.assert_allclose(harness.to_numpy(keras.ops.cast(log_norm, "float32")), want, rtol=1e-2)


def _decode_and_marginals(scores, transitions, lengths):
    return (
        *text.crf_decode(scores, transitions, lengths),
        text.crf_marginals(scores, lengths, transitions),
        *text.crf_top_k_decode(scores, transitions, lengths, 3),
    )


def test_compiled_and_dynamic_length():
    scores, transitions, lengths = _case(9, 3, 7, 4)
    want = [harness.to_numpy(v) for v in _decode_and_marginals(scores, transitions, lengths)]
    if harness.BACKEND == "tensorflow":
        import tensorflow as tf

        signature = (tf.TensorSpec([None, None, 4]), tf.TensorSpec([4, 4]), tf.TensorSpec([None], tf.int32))
        for jit in (False, True):
            fn = tf.function(_decode_and_marginals, input_signature=None if jit else signature, jit_compile=jit)
            got = fn(scores, transitions, lengths.astype("int32"))
            for g, w in zip(got, want):
                np.testing.assert_allclose(harness.to_numpy(g), w, rtol=1e-5, atol=1e-6)
    elif harness.BACKEND == "jax":
        import jax

        got = jax.jit(_decode_and_marginals)(scores, transitions, lengths)
        for g, w in zip(got, want):
            np.testing.assert_allclose(harness.to_numpy(g), w, rtol=1e-5, atol=1e-6)
    else:
        pytest.skip("torch has no compiled call to test here; its eager calls are tested above")


def test_bad_shapes_and_values_raise():
    scores, transitions, lengths = _case(2, 2, 5, 3, with_zero=False)
    for bad in (np.zeros((1, 1)), np.zeros(3), np.zeros((3, 3, 1)), np.zeros(())):
        for call in (lambda t: text.crf_decode(scores, t, lengths),
                     lambda t: text.crf_log_likelihood(scores, np.zeros((2, 5), "int32"), lengths, t),
                     lambda t: text.crf_marginals(scores, lengths, t)):
            with pytest.raises(ValueError, match=r"`transition_params` must have shape \(num_tags, num_tags\)"):
                call(bad.astype("float32"))
    with pytest.raises(ValueError, match=r"`sequence_lengths` must have shape \(batch,\) = \(2,\)"):
        text.crf_decode(scores, transitions, lengths[:1])
    with pytest.raises(ValueError, match=r"must be whole numbers >= 0. Received: sequence_lengths=\[5, -2\]"):
        text.crf_log_norm(scores, np.array([5, -2]), transitions)
    tags = np.zeros((2, 5), "int32")
    tags[1, 1] = -1
    with pytest.raises(ValueError, match=r"tags in \[0, 3\) within each length. Received: tag_indices values \[-1\]"):
        text.crf_sequence_score(scores, tags, lengths, transitions)
    # Beyond an example's length a tag is never read, whatever it holds.
    tags = np.zeros((2, 5), "int32")
    tags[0, 4] = 99
    short = np.array([4, 5])
    np.testing.assert_allclose(
        harness.to_numpy(text.crf_sequence_score(scores, tags, short, transitions)),
        harness.to_numpy(text.crf_sequence_score(scores, np.zeros((2, 5), "int32"), short, transitions)),
    )


def test_marginals_of_no_step():
    probs = text.crf_marginals(np.zeros((2, 0, 3), "float32"), np.array([0, 0]), np.zeros((3, 3), "float32"))
    assert tuple(probs.shape) == (2, 0, 3)


def test_tags_beyond_the_inputs_steps_are_ignored():
    scores = np.array([[[-1.0, 2.0, 1.0]]], "float32")
    tags = np.array([[1, 0]])  # one tag more than the inputs have steps
    score = text.crf_sequence_score(scores, tags, np.array([1]), np.zeros((3, 3), "float32"))
    assert harness.to_numpy(score).tolist() == [2.0]
