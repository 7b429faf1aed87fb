"""Deploying: every public layer, and a model combining them, exported the
ways users ship Keras models, with dynamic batch and time.

- TensorFlow backend: SavedModel (`model.export(format="tf_saved_model")`),
  served by a process that never imports this package; LiteRT with builtin
  ops only (the converter, and `model.export(format="litert")`), run in
  `ai_edge_litert`'s interpreter; ONNX (`model.export(format="onnx")`), run
  in ONNX Runtime.
- JAX backend: SavedModel (through jax2tf), served the same way.
- torch backend: ONNX (`model.export(format="onnx")`), run in ONNX Runtime,
  with no warning from this package's code during export.

Each export is run on two batches of different batch size and length, each
with a fully padded row, and must match `model.predict` within 1e-5.
"""

import os
import pathlib
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest

import keras_addons_qa as kaq
from tests import harness

L = kaq.layers
ROOT = pathlib.Path(__file__).resolve().parent.parent
VOCAB, DIM = 20, 8


def _tokens(batch, length, seed):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, VOCAB, size=(batch, length)).astype("int32")
    tokens[0] = 0  # a fully padded row
    tokens[1, length // 2:] = 0  # right-padded
    if batch > 2:
        tokens[2, :1] = 0  # left-padded
    return tokens


def _token_model(body):
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(VOCAB, DIM, mask_zero=True)(tokens)
    return keras.Model(tokens, body(x))


def _images(batch, size, seed):
    return np.random.default_rng(seed).normal(size=(batch, size, size, 3)).astype("float32")


def _pretrained():
    return np.random.default_rng(1).normal(size=(VOCAB, DIM)).astype("float32")


def _combined():
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    images = keras.Input((None, None, 3), name="images")
    x = L.PretrainedEmbedding(_pretrained(), trainable_tokens=5, trainable_dim=2, mask_zero=True)(tokens)
    x = L.QKVAttention(2, 4, use_gate=True, sliding_window=3)(x, x, use_causal_mask=True)
    x = L.QKVAttention(2, 4, distance_penalty=0.5)(x, x)
    x = L.ActivityPenalty(l1=1e-3, l2=1e-3)(x)
    pooled = L.MaskedAttentionPooling(4)(x)
    seen = L.DecomposedConv2D(4, 3, padding="same")(images)
    seen = keras.layers.GlobalAveragePooling2D()(seen)
    hidden = keras.layers.Concatenate()([pooled, seen])
    hidden = keras.layers.Dense(6, kernel_constraint=kaq.constraints.NonNegative())(hidden)
    mean = keras.layers.Dense(4)(hidden)
    log_var = keras.layers.Dense(4)(hidden)
    z = L.GaussianSampling()([mean, log_var])
    probs = L.MonotoneGroupedSoftmax(3, 5)(z)
    path = L.MonotoneDecode()(probs)
    classes = L.NoiseAdaptation(3)(keras.layers.Dense(3, activation="softmax")(z))
    return keras.Model(
        {"tokens": tokens, "images": images},
        {"classes": classes, "path": path, "probs": probs},
    )


def _batch_inputs(name):
    if name == "combined":
        return [{"tokens": _tokens(3, 5, 0), "images": _images(3, 6, 1)},
                {"tokens": _tokens(2, 7, 2), "images": _images(2, 5, 3)}]
    if name == "decomposed_conv2d":
        return [_images(3, 6, 1), _images(2, 5, 3)]
    if name in ("gaussian_sampling", "noise_adaptation", "monotone_decode", "weight_normalization"):
        return [np.random.default_rng(s).normal(size=(b, 4)).astype("float32")
                for s, b in ((0, 3), (1, 2))]
    return [_tokens(3, 5, 0), _tokens(2, 7, 2)]


def _initialized(model):
    """The model after a call on data (WeightNormalization's data init)."""
    model(np.random.default_rng(9).normal(size=(16, 4)).astype("float32"))
    return model


def _dense_model(body, features=4):
    inputs = keras.Input((features,), name="features")
    return keras.Model(inputs, body(inputs))


def _image_model(body):
    inputs = keras.Input((None, None, 3), name="images")
    return keras.Model(inputs, body(inputs))


MODELS = {
    "activity_penalty": lambda: _token_model(lambda x: L.ActivityPenalty(l1=0.1, l2=0.1)(x)),
    "crf": lambda: _token_model(lambda x: L.CRF(3)(x)["tags"]),
    "crf_constrained": lambda: _token_model(
        lambda x: L.CRF(3, allowed_transitions=("BIO", ["O", "B-X", "I-X"]))(x)["tags"]
    ),
    "decomposed_conv2d": lambda: _image_model(lambda x: L.DecomposedConv2D(4, 3, padding="same")(x)),
    "gaussian_sampling": lambda: _dense_model(
        lambda x: L.GaussianSampling()([keras.layers.Dense(3)(x), keras.layers.Dense(3)(x)])
    ),
    "masked_attention_pooling": lambda: _token_model(lambda x: L.MaskedAttentionPooling(4)(x)),
    "monotone_grouped_softmax": lambda: _token_model(lambda x: L.MonotoneGroupedSoftmax(3, 5)(x)),
    "monotone_decode": lambda: _dense_model(
        lambda x: L.MonotoneDecode("decreasing")(L.MonotoneGroupedSoftmax(6, 5)(x))
    ),
    "noise_adaptation": lambda: _dense_model(
        lambda x: L.NoiseAdaptation(3)(keras.layers.Dense(3, activation="softmax")(x))
    ),
    "pretrained_embedding": lambda: keras.Model(
        k := keras.Input((None,), dtype="int32", name="tokens"),
        L.PretrainedEmbedding(_pretrained(), trainable_tokens=5, mask_zero=True)(k),
    ),
    "qkv_attention": lambda: _token_model(lambda x: L.QKVAttention(2, 4)(x, x)),
    "qkv_attention_causal_gate_window": lambda: _token_model(
        lambda x: L.QKVAttention(2, 4, use_gate=True, sliding_window=2)(x, x, use_causal_mask=True)
    ),
    "qkv_attention_distance_penalty": lambda: _token_model(
        lambda x: L.QKVAttention(2, 4, distance_penalty=0.5)(x, x)
    ),
    "weight_normalization": lambda: _initialized(_dense_model(
        lambda x: L.WeightNormalization(keras.layers.Dense(3, activation="tanh"))(x)
    )),
    "combined": _combined,
}


def _built(name):
    keras.utils.set_random_seed(0)
    model = MODELS[name]()
    batches = _batch_inputs(name)
    expected = [model.predict(b, verbose=0) for b in batches]
    return model, batches, expected


def _flat(outputs):
    """Outputs as a list in a fixed order (dicts by key)."""
    if isinstance(outputs, dict):
        return [np.asarray(outputs[k]) for k in sorted(outputs)]
    if isinstance(outputs, (list, tuple)):
        return [np.asarray(o) for o in outputs]
    return [np.asarray(outputs)]


def _compare(got, expected):
    got, expected = _flat(got), _flat(expected)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape, (g.shape, e.shape)
        if e.dtype.kind in "iu":
            np.testing.assert_array_equal(g, e)
        else:
            np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)


def _feed(batch, names):
    """The batch as a dict keyed by the exported input names."""
    if isinstance(batch, dict):
        return {n: batch[next(k for k in batch if n.startswith(k) or k in n)] for n in names}
    (name,) = names
    return {name: batch}


tensorflow_only = pytest.mark.skipif(
    harness.BACKEND != "tensorflow", reason="SavedModel, LiteRT and tf2onnx export from the TensorFlow backend"
)


@tensorflow_only
@pytest.mark.parametrize("name", sorted(MODELS))
def test_litert_with_builtin_ops_only(name, tmp_path):
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    model, batches, expected = _built(name)
    files = {}
    if not isinstance(model.input, dict):
        # TensorFlow 2.21's `from_keras_model` cannot trace a Keras 3 model
        # with dict inputs (a TypeError inside TensorFlow, with or without
        # this package); `model.export` below handles them.
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        files["converter"] = converter.convert()
    if harness.KERAS_VERSION >= (3, 13):  # Keras's LiteRT export
        path = tmp_path / "model.tflite"
        model.export(str(path), format="litert", verbose=False)
        files["export"] = path.read_bytes()
    if not files:
        pytest.skip(
            f"Keras {keras.__version__} has no LiteRT export (3.13 added it) "
            "and TensorFlow's converter cannot trace dict inputs"
        )
    for blob in files.values():
        for batch, want in zip(batches, expected):
            runner = Interpreter(model_content=blob).get_signature_runner()
            outputs = runner(**_feed(batch, list(runner.get_input_details())))
            # Outputs are named by the model's output keys, or output_0,
            # output_1, ... for a single output.
            got = [outputs[k] for k in sorted(outputs)]
            _compare(got, want)


@pytest.mark.skipif(
    harness.BACKEND not in ("tensorflow", "torch"),
    reason="ONNX export is tested from the TensorFlow (tf2onnx) and torch backends",
)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_onnx(name, tmp_path):
    import onnxruntime

    if name.startswith("crf") and harness.BACKEND == "torch":
        pytest.skip(
            "On torch, the CRF's loop over time is a Python loop, which the ONNX export unrolls "
            "for the traced length; test_crf_layer exports a fixed-length CRF model from torch"
        )
    model, batches, expected = _built(name)
    path = tmp_path / "model.onnx"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.export(str(path), format="onnx", verbose=False)
    ours = [w for w in caught if "keras_addons_qa" in str(w.filename)]
    assert not ours, [f"{w.filename}:{w.lineno}: {w.message}" for w in ours]
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    for batch, want in zip(batches, expected):
        got = session.run(None, _feed(batch, names))
        if isinstance(want, dict):  # ONNX outputs follow the model's outputs
            order = [k for k in model.output]
            got = {k: g for k, g in zip(order, got)}
        _compare(got, want)


_SERVE = """
import sys
import numpy as np
import tensorflow as tf

assert "keras_addons_qa" not in sys.modules
loaded = tf.saved_model.load(sys.argv[1])
batches = np.load(sys.argv[2], allow_pickle=True)["batches"]
outputs = []
for batch in batches:
    out = loaded.serve(batch)
    if isinstance(out, dict):
        out = {k: v.numpy() for k, v in out.items()}
    elif isinstance(out, (list, tuple)):
        out = [v.numpy() for v in out]
    else:
        out = out.numpy()
    outputs.append(out)
assert not any(m.startswith("keras_addons_qa") for m in sys.modules), "imported the package"
np.save(sys.argv[3], np.array(outputs + [None], dtype=object)[:-1], allow_pickle=True)
"""


@pytest.mark.skipif(
    harness.BACKEND not in ("tensorflow", "jax"),
    reason="Keras exports a SavedModel from the TensorFlow and JAX backends only",
)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_saved_model_served_without_the_package(name, tmp_path):
    model, batches, expected = _built(name)
    model.export(str(tmp_path / "saved"), format="tf_saved_model", verbose=False)
    np.savez(tmp_path / "batches.npz", batches=np.array(batches + [None], dtype=object)[:-1])
    script = tmp_path / "serve.py"
    script.write_text(_SERVE)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "saved"),
         str(tmp_path / "batches.npz"), str(tmp_path / "out.npy")],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for got, want in zip(np.load(tmp_path / "out.npy", allow_pickle=True), expected):
        _compare(got, want)
