import pathlib

import keras
import numpy as np
import pytest

from keras_addons_qa.losses import AlmostOneHotEmbeddingLoss
from tests import harness

P = np.array([[0.5, 0.3, 0.2]], "float32")


class AlmostOneHotEmbeddingLossHarnessTest(harness.TestCase):
    def test_class_serialization(self):
        self.run_class_serialization_test(
            AlmostOneHotEmbeddingLoss(
                np.arange(6.0).reshape(3, 2), power=3.0, iterations=2,
                distance="cosine", from_logits=True,
            )
        )


@pytest.mark.parametrize(
    "iterations, expected",
    [(1, [0.65789, 0.23684, 0.10526]), (2, [0.86565, 0.11219, 0.02216])],
)
def test_seed_sharpening_values(iterations, expected):
    loss = AlmostOneHotEmbeddingLoss(np.eye(3), power=2.0, iterations=iterations)
    np.testing.assert_allclose(harness.to_numpy(loss.sharpen(P)), [expected], atol=1e-5)
    # With an identity embedding, the mapped vector is q itself.
    target = np.array([[1.0, 0.0, 0.0]], "float32")
    mse = np.mean((np.array(expected) - target) ** 2)
    np.testing.assert_allclose(harness.to_numpy(loss(target, P)), mse, atol=1e-5)


def test_iterations_equal_one_sharpening_with_the_power_raised():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(7), size=4).astype("float32")
    twice = AlmostOneHotEmbeddingLoss(np.eye(7), power=1.5, iterations=3)
    once = AlmostOneHotEmbeddingLoss(np.eye(7), power=1.5**3)
    np.testing.assert_allclose(
        harness.to_numpy(twice.sharpen(p)), harness.to_numpy(once.sharpen(p)), atol=1e-6
    )


def test_mse_and_cosine_against_numpy_and_keras():
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(5, 4)).astype("float32")
    p = rng.dirichlet(np.ones(5), size=6).astype("float32")
    y = rng.normal(size=(6, 4)).astype("float32")
    q = p**3 / (p**3).sum(-1, keepdims=True)
    mapped = q @ emb
    mse = AlmostOneHotEmbeddingLoss(emb, power=3.0)
    np.testing.assert_allclose(
        harness.to_numpy(mse(y, p)), np.mean((mapped - y) ** 2), rtol=1e-5
    )
    cosine = AlmostOneHotEmbeddingLoss(emb, power=3.0, distance="cosine")
    stock = keras.losses.CosineSimilarity()
    np.testing.assert_allclose(
        harness.to_numpy(cosine(y, p)), harness.to_numpy(stock(y, mapped)), rtol=1e-5
    )


def test_from_logits_equals_softmax_of_probabilities():
    rng = np.random.default_rng(2)
    emb = rng.normal(size=(6, 3)).astype("float32")
    logits = rng.normal(size=(4, 6)).astype("float32") * 5
    y = rng.normal(size=(4, 3)).astype("float32")
    probs = harness.to_numpy(keras.ops.softmax(logits))
    a = AlmostOneHotEmbeddingLoss(emb, power=5.0, from_logits=True)(y, logits)
    b = AlmostOneHotEmbeddingLoss(emb, power=5.0)(y, probs)
    np.testing.assert_allclose(harness.to_numpy(a), harness.to_numpy(b), rtol=1e-5)


@pytest.mark.parametrize("power, iterations", [(1000.0, 1), (4.0, 30), (2.0, 1)])
@pytest.mark.parametrize("from_logits", [False, True])
def test_extreme_powers_and_probabilities_stay_finite(power, iterations, from_logits):
    emb = np.random.default_rng(3).normal(size=(4, 3)).astype("float32")
    if from_logits:
        y_pred = np.array([[1e4, -1e4, 0.0, 3.0], [-1e4, -1e4, -1e4, -1e4]], "float32")
    else:
        y_pred = np.array([[1e-30, 0.0, 0.5, 0.5 - 1e-30], [0.0, 0.0, 1.0, 0.0]], "float32")
    # The naive recipe breaks here: p ** 1000 underflows to 0, and 0 / 0 is NaN.
    if power == 1000.0 and not from_logits:
        with np.errstate(all="ignore"):
            naive = y_pred**power / (y_pred**power).sum(-1, keepdims=True)
        assert np.isnan(naive).any()
    loss = AlmostOneHotEmbeddingLoss(
        emb, power=power, iterations=iterations, from_logits=from_logits
    )
    y_true = np.ones((2, 3), "float32")
    pred = keras.Variable(y_pred)
    value, (grad,) = harness.gradients(lambda: loss(y_true, pred), [pred])
    harness.assert_finite(value, grad)


def test_sequences_use_the_per_step_loss():
    rng = np.random.default_rng(4)
    emb = rng.normal(size=(5, 2)).astype("float32")
    p = rng.dirichlet(np.ones(5), size=(3, 4)).astype("float32")
    y = rng.normal(size=(3, 4, 2)).astype("float32")
    loss = AlmostOneHotEmbeddingLoss(emb, reduction="none")
    per_step = harness.to_numpy(loss(y, p))
    assert per_step.shape == (3, 4)
    flat = harness.to_numpy(loss(y.reshape(12, 2), p.reshape(12, 5)))
    np.testing.assert_allclose(per_step.reshape(12), flat, rtol=1e-6)


@harness.tensorflow_only
def test_no_tensor_of_batch_by_vocab_by_dim_is_ever_formed():
    # The seed's recipe tiles the embedding per example: batch * vocab * dim
    # numbers (17 GB for 512 x 32768 x 256). Ours is one matmul: the largest
    # tensor in the forward *and* backward graph is the embedding or p.
    import tensorflow as tf

    batch, vocab, dim = 16, 64, 32
    loss = AlmostOneHotEmbeddingLoss(np.ones((vocab, dim)), power=3.0)

    @tf.function
    def loss_and_grad(y_true, y_pred):
        with tf.GradientTape() as tape:
            tape.watch(y_pred)
            value = loss(y_true, y_pred)
        return value, tape.gradient(value, y_pred)

    graph = loss_and_grad.get_concrete_function(
        tf.TensorSpec((batch, dim)), tf.TensorSpec((batch, vocab))
    ).graph
    sizes = [
        t.shape.num_elements()
        for op in graph.get_operations()
        for t in op.outputs
        if t.shape.is_fully_defined()
    ]
    assert max(sizes) == max(batch * vocab, vocab * dim)
    assert max(sizes) < batch * vocab * dim


def test_works_in_compile_and_fit():
    rng = np.random.default_rng(5)
    emb = rng.normal(size=(8, 4)).astype("float32")
    labels = rng.integers(0, 8, size=128)
    x = np.eye(8, dtype="float32")[labels] + rng.normal(size=(128, 8)).astype("float32") * 0.1
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(8, activation="softmax")])
    model.compile(keras.optimizers.Adam(0.05), loss=AlmostOneHotEmbeddingLoss(emb))
    history = model.fit(x, emb[labels], epochs=15, batch_size=32, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"power": 0.0}, "power=0.0"),
        ({"power": -2.0}, "power=-2.0"),
        ({"power": float("inf")}, "power=inf"),
        ({"iterations": 0}, "iterations=0"),
        ({"iterations": 1.5}, "iterations=1.5"),
        ({"distance": "l1"}, "distance='l1'"),
        ({"embedding": np.ones((2, 3, 4))}, r"embedding.shape=\(2, 3, 4\)"),
        ({"embedding": np.ones(3)}, r"embedding.shape=\(3,\)"),
    ],
)
def test_bad_arguments(kwargs, message):
    kwargs = {"embedding": np.eye(3), **kwargs}
    with pytest.raises(ValueError, match=message):
        AlmostOneHotEmbeddingLoss(**kwargs)


def test_bad_inputs():
    loss = AlmostOneHotEmbeddingLoss(np.eye(3))
    with pytest.raises(ValueError, match=r"y_pred.shape=\(1, 4\)"):
        loss(np.zeros((1, 3)), np.full((1, 4), 0.25))
    with pytest.raises(ValueError, match=r"y_true.shape=\(1, 2\)"):
        loss(np.zeros((1, 2)), P)


def test_config_holds_the_shape_not_the_matrix():
    emb = np.arange(6.0).reshape(3, 2)
    loss = AlmostOneHotEmbeddingLoss(emb, power=2.5, distance="cosine", name="x")
    config = loss.get_config()
    assert "embedding" not in config and config["embedding_shape"] == [3, 2]
    for key in ("power", "iterations", "distance", "from_logits", "reduction", "name", "dtype"):
        assert key in config
    clone = AlmostOneHotEmbeddingLoss.from_config(config)
    assert clone.get_config() == config
    assert (clone.vocab_size, clone.embedding_dim) == (3, 2)
    # Alone, a clone from a config has no matrix yet, and says where it is.
    with pytest.raises(ValueError, match="arrives with the weights of a saved model"):
        clone(np.zeros((1, 2)), np.full((1, 3), 1 / 3))
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored, AlmostOneHotEmbeddingLoss)


def _compiled(matrix, power=2.0):
    inputs = keras.Input((4,))
    model = keras.Model(
        inputs, keras.layers.Dense(matrix.shape[0], activation="softmax")(inputs)
    )
    model.compile("sgd", loss=AlmostOneHotEmbeddingLoss(matrix, power=power))
    return model


def test_saved_model_carries_the_matrix_in_its_weights_not_its_config(tmp_path):
    import json
    import zipfile

    rng = np.random.default_rng(30)
    matrix = rng.normal(size=(2000, 16)).astype("float32")
    x = rng.normal(size=(16, 4)).astype("float32")
    y = rng.normal(size=(16, 16)).astype("float32")
    model = _compiled(matrix)
    model.fit(x, y, epochs=1, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    with zipfile.ZipFile(path) as archive:
        config = archive.read("config.json")
    assert len(config) < 20_000  # the matrix is 32,000 numbers
    assert "embedding_shape" in json.loads(config)["compile_config"]["loss"]["config"]
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(harness.to_numpy(loaded.loss.embedding), matrix)
    np.testing.assert_allclose(
        loaded.evaluate(x, y, verbose=0), model.evaluate(x, y, verbose=0), rtol=1e-6
    )
    # It trains on with the same loss: one more step is the same step.
    after = [m.fit(x, y, epochs=1, shuffle=False, verbose=0).history["loss"][0]
             for m in (model, loaded)]
    np.testing.assert_allclose(after[1], after[0], rtol=1e-5)


def test_a_model_saved_by_0_1_0_loads_with_its_matrix():
    from tests.fixtures import make_loss_0_1_0 as fixture

    path = pathlib.Path(fixture.__file__).parent
    harness.skip_unless_keras_reads(path / "loss_0_1_0.keras")
    loaded = keras.saving.load_model(path / "loss_0_1_0.keras", safe_mode=True)
    np.testing.assert_array_equal(harness.to_numpy(loaded.loss.embedding), fixture.matrix())
    x, y = fixture.data()
    np.testing.assert_allclose(
        loaded.evaluate(x, y, verbose=0), np.load(path / "loss_0_1_0_expected.npy"), rtol=1e-6
    )


@harness.tensorflow_only
def test_the_matrix_is_not_a_constant_of_the_traced_step():
    # A traced train step reads the matrix as a variable: its graph is the
    # same size for a 100x larger vocabulary.
    import tensorflow as tf

    def graph_bytes(vocab):
        matrix = np.random.default_rng(31).normal(size=(vocab, 32)).astype("float32")
        loss = AlmostOneHotEmbeddingLoss(matrix)
        logits = tf.Variable(np.zeros((4, vocab), "float32"))
        target = np.zeros((4, 32), "float32")

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                value = loss(target, tf.nn.softmax(logits))
            return tape.gradient(value, logits)

        return len(step.get_concrete_function().graph.as_graph_def().SerializeToString())

    small, large = graph_bytes(100), graph_bytes(10_000)
    assert large < small * 1.1 + 10_000, (small, large)  # 10,000 x 32 floats is 1.3 MB


def _reference_loss(embedding, power, iterations, from_logits):
    """The textbook composition, differentiated automatically: sharpen step
    by step (log space, so it stays finite), one matmul, MSE."""
    from keras import ops

    def loss(y_true, y_pred):
        if from_logits:
            log_q = ops.log_softmax(y_pred, axis=-1)
        else:
            log_q = ops.log(ops.maximum(y_pred, 1.1754943508222875e-38))
        for _ in range(iterations):
            log_q = ops.log_softmax(power * log_q, axis=-1)
        predicted = ops.matmul(ops.exp(log_q), ops.convert_to_tensor(embedding))
        return ops.mean(ops.square(predicted - ops.convert_to_tensor(y_true)))

    return loss


@pytest.mark.parametrize("batch", [(32,), (4, 8)], ids=["rows", "sequences"])
@pytest.mark.parametrize("from_logits", [False, True], ids=["probs", "logits"])
@pytest.mark.parametrize("power, iterations", [(3.0, 1), (2.0, 3), (0.5, 2)])
def test_hand_written_gradient_equals_automatic_differentiation(
    power, iterations, from_logits, batch
):
    """The loss's gradient (written by hand, see `_embed`) against the same
    loss differentiated by the backend, in float32 on every backend (the
    float64 finite-difference check in test_gradients.py skips torch).
    32 rows: TensorFlow 2.19's einsum `...d,vd->...v` is wrong for 2-D
    inputs of 17 rows or more."""
    rng = np.random.default_rng(11)
    embedding = rng.normal(size=(9, 4)).astype("float32")
    logits = rng.normal(size=batch + (9,)).astype("float32") * 2
    if from_logits:
        start = logits
    else:
        start = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        start.reshape(-1, 9)[0, :3] = 0.0  # exact zeros: the floor, no gradient
        start /= start.sum(-1, keepdims=True)
    y_true = rng.normal(size=batch + (4,)).astype("float32")
    ours = AlmostOneHotEmbeddingLoss(
        embedding, power=power, iterations=iterations, from_logits=from_logits
    )
    reference = _reference_loss(embedding, power, iterations, from_logits)
    values, grads = [], []
    for fn in (ours, reference):
        y_pred = keras.Variable(start.astype("float32"))
        value, (grad,) = harness.gradients(lambda: fn(y_true, y_pred), [y_pred])
        values.append(float(value))
        grads.append(harness.to_numpy(grad))
    np.testing.assert_allclose(values[0], values[1], rtol=1e-5)
    scale = np.abs(grads[1]).max()
    assert scale > 0
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-4, atol=1e-5 * scale)
    if not from_logits:
        assert np.all(grads[0].reshape(-1, 9)[0, :3] == 0.0)
