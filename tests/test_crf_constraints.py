"""Span tagging constraints: `text.allowed_transitions` against each
scheme's grammar, and a constrained `CRF` against brute force over the
valid sequences only."""

import itertools
import re

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import keras_addons_qa as kaq
from keras_addons_qa import text
from tests import harness

# Each scheme's valid sequences as a regular expression over the tags
# written as two characters each, prefix and type ("O_" for O): chunks of
# one type, read from the scheme's definition.
GRAMMARS = {
    "BIO": r"(?:O_|B(.)(?:I\1)*)*",
    "IOB1": r"(?:O_|I(.)(?:[IB]\1)*)*",
    "BIOUL": r"(?:O_|U.|B(.)(?:I\1)*L\1)*",
    "BMES": r"(?:S.|B(.)(?:M\1)*E\1)*",
}
LABELS = {
    "BIO": ["O", "B-A", "I-A", "B-B", "I-B"],
    "IOB1": ["O", "I-A", "B-A", "I-B", "B-B"],
    "BIOUL": ["O", "B-A", "I-A", "L-A", "U-A", "U-B", "B-B", "I-B", "L-B"],
    "BMES": ["B-A", "M-A", "E-A", "S-A", "S-B", "B-B", "M-B", "E-B"],
}


def _grammatical(scheme, labels, path):
    written = "".join(labels[t].replace("-", "") if labels[t] != "O" else "O_" for t in path)
    return re.fullmatch(GRAMMARS[scheme], written) is not None


def _allowed(allowed, path):
    transitions, start, end = allowed
    return bool(start[path[0]] and end[path[-1]] and all(transitions[a, b] for a, b in zip(path, path[1:])))


@pytest.mark.parametrize("scheme", sorted(GRAMMARS))
def test_allowed_transitions_accept_exactly_the_schemes_sequences(scheme):
    labels = LABELS[scheme]
    allowed = text.allowed_transitions(scheme, labels)
    assert [a.dtype for a in allowed] == [bool] * 3
    for length in range(1, 5):
        for path in itertools.product(range(len(labels)), repeat=length):
            assert _allowed(allowed, path) == _grammatical(scheme, labels, path), [labels[t] for t in path]
    # A dict from index to label, and lowercase scheme names, give the same.
    again = text.allowed_transitions(scheme.lower(), dict(enumerate(labels)))
    for a, b in zip(allowed, again):
        np.testing.assert_array_equal(a, b)


def test_allowed_transitions_errors():
    with pytest.raises(ValueError, match="constraint_type must be one of .* Received: constraint_type='BILOU2'"):
        text.allowed_transitions("BILOU2", ["O"])
    with pytest.raises(ValueError, match=r"Received: labels\[1\]='X-PER'"):
        text.allowed_transitions("BIO", ["O", "X-PER"])
    with pytest.raises(ValueError, match=r"Received: labels\[0\]='O'"):
        text.allowed_transitions("BMES", ["O", "S-PER"])  # BMES has no O
    with pytest.raises(ValueError, match=r"Received: labels\[1\]='B'"):
        text.allowed_transitions("BIO", ["O", "B"])
    with pytest.raises(ValueError, match="non-empty list of strings"):
        text.allowed_transitions("BIO", "B-PER")
    with pytest.raises(ValueError, match=r"CRF: allowed_transitions needs a label for each of the num_tags=3 tags. Received: allowed_transitions=\('BIO', \['O', 'B-A'\]\) \(2 labels\)"):
        kaq.layers.CRF(3, allowed_transitions=("BIO", ["O", "B-A"]))
    with pytest.raises(ValueError, match="allowed_transitions must be None or"):
        kaq.layers.CRF(3, allowed_transitions="BIO")


def _constrained_layer(scheme, seed, use_boundary=True):
    labels = LABELS[scheme]
    layer = kaq.layers.CRF(
        len(labels), use_kernel=False, use_boundary=use_boundary, return_marginals=True,
        allowed_transitions=(scheme, labels),
    )
    layer.build((None, None, len(labels)))
    rng = np.random.default_rng(seed)
    for weight in layer.trainable_weights:
        weight.assign(rng.normal(size=weight.shape).astype("float32") * 2)
    return layer


def _paths(layer, scores, valid):
    """Every valid tag sequence over the valid steps and its score."""
    transitions = harness.to_numpy(layer.chain_kernel)
    start = harness.to_numpy(layer.left_boundary) if layer.use_boundary else np.zeros(layer.num_tags)
    end = harness.to_numpy(layer.right_boundary) if layer.use_boundary else np.zeros(layer.num_tags)
    allowed = text.allowed_transitions(*layer.allowed_transitions)
    steps = np.flatnonzero(valid)
    for path in itertools.product(range(layer.num_tags), repeat=len(steps)):
        if path and not _allowed(allowed, path):
            continue
        value = sum(scores[t, tag] for t, tag in zip(steps, path))
        value += sum(transitions[a, b] for a, b in zip(path, path[1:]))
        if path:
            value += start[path[0]] + end[path[-1]]
        yield path, float(value)


@settings(max_examples=harness.examples(20), deadline=None)
@given(
    scheme=st.sampled_from(["BIO", "IOB1", "BIOUL"]),
    steps=st.integers(1, 4),
    use_boundary=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_constrained_crf_equals_brute_force_over_valid_sequences(scheme, steps, use_boundary, seed):
    layer = _constrained_layer(scheme, seed, use_boundary)
    rng = np.random.default_rng(seed)
    scores = (rng.normal(size=(3, steps, layer.num_tags)) * 3).astype("float32")
    valid = rng.random((3, steps)) > 0.3  # masked steps are skipped: the chain joins around them
    out = layer(scores, mask=valid)
    decoded, marginals = harness.to_numpy(out["tags"]), harness.to_numpy(out["marginals"])
    for b in range(3):
        paths = dict(_paths(layer, scores[b], valid[b]))
        values = np.array(list(paths.values()))
        log_z = np.logaddexp.reduce(values)
        gold = max(paths, key=lambda p: rng.random())  # any valid sequence
        tags = np.zeros((1, steps), "int32")
        tags[0, valid[b]] = gold
        loss = harness.to_numpy(kaq.losses.CRFLoss(reduction=None)(tags, out["potentials"][b:b + 1]))
        np.testing.assert_allclose(loss[0], log_z - paths[gold], rtol=1e-4, atol=1e-4)
        path = tuple(decoded[b, valid[b]])
        assert path in paths  # a valid sequence, and the best of them
        np.testing.assert_allclose(paths[path], values.max(), rtol=1e-5, atol=1e-5)
        expected = np.zeros((steps, layer.num_tags))
        for p, prob in zip(paths, np.exp(values - log_z)):
            expected[np.flatnonzero(valid[b]), list(p)] += prob
        np.testing.assert_allclose(marginals[b], expected, rtol=1e-4, atol=1e-6)


def test_gold_tags_that_break_the_scheme():
    layer = _constrained_layer("BIO", 3)
    scores = np.random.default_rng(3).normal(size=(2, 4, 5)).astype("float32")
    tags = np.array([[1, 2, 0, 3], [0, 2, 0, 0]])  # I-A after O in the second example
    potentials = layer(scores)["potentials"]
    with pytest.raises(ValueError, match=r"batch indices \[1\] take a transition"):
        kaq.losses.CRFLoss()(tags, potentials)  # eager: a clear error
    # Compiled: finite, about 1e30 for the broken example; finite gradients.
    x = keras.Variable(scores)

    def loss():
        return kaq.losses.CRFLoss(reduction=None)(tags, layer(x.value)["potentials"])

    if harness.BACKEND == "tensorflow":
        import tensorflow as tf

        value, grads = tf.function(
            lambda: (loss(), harness.gradients(lambda: tf.reduce_sum(loss()), [x, layer.chain_kernel])[1])
        )()
    elif harness.BACKEND == "jax":
        import jax

        def total(data, kernel):
            with keras.StatelessScope(state_mapping=[(x, data), (layer.chain_kernel, kernel)]):
                value = loss()
            return value.sum(), value

        (_, value), grads = jax.jit(jax.value_and_grad(total, argnums=(0, 1), has_aux=True))(
            x.value, layer.chain_kernel.value
        )
    else:
        pytest.skip("torch runs eagerly: the error above is what it gives")
    value = harness.to_numpy(value)
    assert np.isfinite(value).all() and value[1] > 1e29 and value[0] < 100
    for grad in grads:
        harness.assert_finite(harness.to_numpy(grad))


def test_constrained_crf_saves_and_loads(tmp_path):
    inputs = keras.Input((None, 5))
    model = keras.Model(inputs, _constrained_layer("BIO", 4)(inputs))
    scores = np.random.default_rng(4).normal(size=(2, 6, 5)).astype("float32") * 3
    path = tmp_path / "constrained.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    for key in ("tags", "marginals"):
        np.testing.assert_allclose(
            harness.to_numpy(loaded(scores)[key]), harness.to_numpy(model(scores)[key]), atol=1e-6
        )
    layer = loaded.layers[-1]
    assert layer.allowed_transitions == ("BIO", LABELS["BIO"]) or layer.allowed_transitions == [
        "BIO", LABELS["BIO"]
    ]


def test_labels_as_a_dict_and_a_float64_layer_without_boundaries():
    labels = {1: "B-A", 0: "O", 2: "I-A"}  # read in index order
    layer = kaq.layers.CRF(3, use_kernel=False, use_boundary=False, dtype="float64",
                           allowed_transitions=("BIO", labels))
    assert list(layer.allowed_transitions[1]) == ["O", "B-A", "I-A"]
    scores = np.random.default_rng(0).normal(size=(4, 6, 3)) * 3
    scores[..., 2] += 5.0  # I-A everywhere, were it allowed
    decoded = harness.to_numpy(layer(scores)["tags"])
    for row in decoded:
        assert _grammatical("BIO", ["O", "B-A", "I-A"], row), row
