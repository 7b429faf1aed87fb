import keras
import numpy as np
import pytest

from keras_addons_qa.layers import PretrainedEmbedding
from tests import harness

VECTORS = np.random.default_rng(0).normal(size=(10, 4)).astype("float32")


class PretrainedEmbeddingHarnessTest(harness.TestCase):
    def test_layer_harness(self):
        self.run_layer_test(
            PretrainedEmbedding,
            init_kwargs={"embeddings": VECTORS, "trainable_tokens": 3, "trainable_dim": 2},
            input_data=np.array([[0, 4, 9], [2, 2, 1]]),
            expected_output_shape=(2, 3, 6),
            expected_num_trainable_weights=1,
            expected_num_non_trainable_weights=1,
            expected_num_losses=0,
            supports_masking=False,
            run_training_check=False,  # integer inputs; fit is tested below
        )


def test_output_is_pretrained_then_trainable_part():
    layer = PretrainedEmbedding(VECTORS, trainable_tokens=3, trainable_dim=2)
    layer.build()
    table = np.arange(6, dtype="float32").reshape(3, 2) + 1.0
    layer.trainable_embeddings.assign(table)
    ids = np.array([[0, 2, 3], [9, 1, 5]])
    out = harness.to_numpy(layer(ids))
    assert out.shape == (2, 3, 6)
    np.testing.assert_array_equal(out[..., :4], VECTORS[ids])
    expected = np.where((ids < 3)[..., None], table[np.minimum(ids, 2)], 0.0)
    np.testing.assert_array_equal(out[..., 4:], expected)


def test_defaults_frozen_layer_and_trainable_dim():
    frozen = PretrainedEmbedding(VECTORS)
    assert tuple(frozen(np.array([1, 2])).shape) == (2, 4)
    assert frozen.trainable_weights == []
    wide = PretrainedEmbedding(VECTORS, trainable_tokens=5)
    out = harness.to_numpy(wide(np.array([1, 7])))
    assert out.shape == (2, 8)
    np.testing.assert_array_equal(out[:, 4:], 0.0)  # zero-initialized


@pytest.mark.parametrize("jit", [False, True])
def test_training_moves_only_the_trainable_rows_of_frequent_ids(jit):
    layer = PretrainedEmbedding(VECTORS, trainable_tokens=3, trainable_dim=2)
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 10, size=(64, 5))
    y = rng.normal(size=(64, 1)).astype("float32")
    model = keras.Sequential(
        [keras.Input((5,), dtype="int32"), layer, keras.layers.Flatten(), keras.layers.Dense(1)]
    )
    model.compile(keras.optimizers.Adam(0.05), "mse", jit_compile=jit)
    model.fit(ids, y, epochs=5, batch_size=16, verbose=0)
    np.testing.assert_array_equal(harness.to_numpy(layer.embeddings), VECTORS)
    table = harness.to_numpy(layer.trainable_embeddings)
    # Every frequent row was used and trained (it started at zero).
    assert np.abs(table).max(axis=1).min() > 1e-2, table
    out = harness.to_numpy(layer(np.array([3, 4, 9])))
    np.testing.assert_array_equal(out[:, 4:], 0.0)


def test_rare_ids_send_no_gradient_to_the_table():
    layer = PretrainedEmbedding(VECTORS, trainable_tokens=3, trainable_dim=2)
    layer.build()

    def fn():
        return keras.ops.sum(keras.ops.square(layer(np.array([[5, 9, 2]])) + 1.0))

    _, (grad,) = harness.gradients(fn, [layer.trainable_embeddings])
    grad = harness.to_numpy(grad)
    np.testing.assert_array_equal(grad[:2], 0.0)  # ids 0 and 1 absent; 5, 9 rare
    np.testing.assert_allclose(grad[2], 2.0)  # d/dt sum((t + 1)^2) at t = 0


def test_mask_zero():
    layer = PretrainedEmbedding(VECTORS, trainable_tokens=2, mask_zero=True)
    ids = np.array([[3, 1, 0, 0]])
    mask = harness.to_numpy(layer.compute_mask(ids))
    np.testing.assert_array_equal(mask, [[True, True, False, False]])
    inputs = keras.Input((4,), dtype="int32")
    pooled = keras.layers.GlobalAveragePooling1D()(layer(inputs))
    out = harness.to_numpy(keras.Model(inputs, pooled)(ids))
    np.testing.assert_allclose(out[0, :4], VECTORS[[3, 1]].mean(0), rtol=1e-6)


def test_mixed_precision_output():
    with harness.dtype_policy("mixed_float16"):
        layer = PretrainedEmbedding(VECTORS, trainable_tokens=2)
        out = layer(np.array([1, 2]))
    assert keras.backend.standardize_dtype(out.dtype) == "float16"
    assert keras.backend.standardize_dtype(layer.embeddings.dtype) == "float32"


def test_config_round_trip_keeps_the_shape_not_the_values(tmp_path):
    layer = PretrainedEmbedding(VECTORS, trainable_tokens=3, trainable_dim=2, mask_zero=True)
    config = layer.get_config()
    assert config["embeddings_shape"] == [10, 4]
    assert "embeddings" not in config
    clone = PretrainedEmbedding.from_config(config)
    assert tuple(clone(np.array([1])).shape) == (1, 6)
    inputs = keras.Input((3,), dtype="int32")
    model = keras.Model(inputs, layer(inputs))
    restored = harness.save_and_reload(model, tmp_path)
    ids = np.array([[1, 9, 0]])
    np.testing.assert_array_equal(harness.to_numpy(restored(ids)), harness.to_numpy(model(ids)))
    np.testing.assert_array_equal(harness.to_numpy(restored.layers[-1].embeddings), VECTORS)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(embeddings=np.zeros(5)), r"embeddings.shape=\(5,\)"),
        (dict(embeddings=np.zeros((0, 3))), r"embeddings.shape=\(0, 3\)"),
        (dict(embeddings=np.array([[1.0, np.nan]])), r"non-finite entries \(1 of 2\)"),
        (dict(embeddings=np.array([["a"]])), "embeddings.dtype=<U1"),
        (dict(embeddings=VECTORS, trainable_tokens=-1), "trainable_tokens=-1"),
        (dict(embeddings=VECTORS, trainable_tokens=11), "trainable_tokens=11"),
        (dict(embeddings=VECTORS, trainable_tokens=2, trainable_dim=0), "trainable_dim=0"),
        (dict(embeddings=VECTORS, trainable_dim=3), "trainable_dim=3, trainable_tokens=0"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PretrainedEmbedding(**kwargs)
