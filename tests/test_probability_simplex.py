import keras
import numpy as np
import pytest

from keras_addons_qa.constraints import ProbabilitySimplex
from tests import harness


def duchi(v):
    """Duchi et al. (2008), Figure 1, written out with the index rho."""
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - 1.0
    rho = np.nonzero(u - css / np.arange(1, len(v) + 1) > 0)[0][-1]
    return np.maximum(v - css[rho] / (rho + 1), 0.0)


class ProbabilitySimplexHarnessTest(harness.TestCase):
    def test_class_serialization(self):
        self.run_class_serialization_test(ProbabilitySimplex(axis=-1))


def test_the_examples_of_the_issue():
    project = ProbabilitySimplex(axis=0)
    np.testing.assert_allclose(
        harness.to_numpy(project(np.array([0.5, 0.8, -0.2], "float32"))),
        [0.35, 0.65, 0.0], atol=1e-6,
    )
    np.testing.assert_allclose(
        harness.to_numpy(project(np.ones(3, "float32"))), [1 / 3] * 3, rtol=1e-6
    )
    on = np.array([0.2, 0.0, 0.5, 0.3], "float32")
    np.testing.assert_allclose(harness.to_numpy(project(on)), on, atol=1e-7)


@pytest.mark.parametrize("axis", [0, 1, -1, 2])
def test_matches_the_sort_and_threshold_algorithm_along_any_axis(axis):
    rng = np.random.default_rng(axis + 5)
    w = rng.normal(size=(5, 7, 3)) * rng.choice([0.01, 1.0, 100.0], size=(5, 7, 3))
    projected = harness.to_numpy(ProbabilitySimplex(axis=axis)(w.astype("float64")))
    # float64 stays float64 on TensorFlow; JAX without x64 and Keras's torch
    # `cumsum` compute in float32 (rounding relative to the largest entry).
    atol = 1e-12 if harness.BACKEND == "tensorflow" else 1e-6 * max(1.0, np.abs(w).max())
    expected = np.apply_along_axis(duchi, axis, w)
    np.testing.assert_allclose(projected, expected, atol=atol)
    np.testing.assert_allclose(projected.sum(axis=axis), 1.0, atol=atol)
    assert projected.min() >= 0.0


def test_is_the_closest_point_and_idempotent():
    rng = np.random.default_rng(1)
    v = rng.normal(size=(6, 1)).astype("float64")
    w = harness.to_numpy(ProbabilitySimplex(axis=0)(v))
    # No other point of the simplex is closer (random candidates).
    others = rng.dirichlet(np.ones(6), size=2000).T
    assert np.linalg.norm(v - w) <= np.linalg.norm(v - others, axis=0).min()
    again = harness.to_numpy(ProbabilitySimplex(axis=0)(w))
    np.testing.assert_allclose(again, w, atol=1e-12 if harness.BACKEND == "tensorflow" else 1e-6)


def test_float16_weights_stay_float16_and_on_the_simplex():
    w = np.array([[3.0, -1.0], [2.9, 60000.0]], "float16")
    out = ProbabilitySimplex(axis=0)(w)
    assert keras.backend.standardize_dtype(out.dtype) == "float16"
    np.testing.assert_allclose(harness.to_numpy(out).astype("float32").sum(0), 1.0, atol=1e-3)


@pytest.mark.parametrize("jit", [False, True])
def test_dense_kernel_columns_are_distributions_after_fit(jit):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = rng.normal(size=(64, 3)).astype("float32")
    layer = keras.layers.Dense(
        3, use_bias=False, kernel_constraint=ProbabilitySimplex(axis=0)
    )
    model = keras.Sequential([keras.Input((4,)), layer])
    model.compile(keras.optimizers.SGD(0.5), "mse", jit_compile=jit)
    initial = harness.to_numpy(layer.kernel).copy()
    model.fit(x, y, epochs=3, batch_size=16, verbose=0)
    kernel = harness.to_numpy(layer.kernel)
    assert np.abs(kernel - initial).max() > 1e-2
    np.testing.assert_allclose(kernel.sum(axis=0), 1.0, atol=1e-5)
    assert kernel.min() >= 0.0


@pytest.mark.parametrize("axis", [1.5, "0", None, True])
def test_bad_axis(axis):
    with pytest.raises(ValueError, match=f"axis={axis!r}"):
        ProbabilitySimplex(axis=axis)


def test_axis_out_of_range_for_the_weight():
    with pytest.raises(ValueError, match=r"weight.shape=\(3, 2\)"):
        ProbabilitySimplex(axis=2)(np.zeros((3, 2), "float32"))
