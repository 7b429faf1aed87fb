"""`.keras` files: a model with every component survives a round trip.

Saved after training, loaded with `safe_mode=True` and no `custom_objects`:
weights, configuration, optimizer state and predictions are unchanged, and
training resumes identically. A file whose class name was tampered with
fails to load with an error naming the class. Nothing in the package or
the tutorials relies on `Lambda` layers or pickled code.
"""

import json
import pathlib
import zipfile

import keras
import numpy as np
import pytest

from tests import harness

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _trained(tmp_path):
    keras.utils.set_random_seed(3)
    model = harness.every_component_model()
    tokens, y = harness.every_component_data()
    model.fit(tokens, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    path = tmp_path / "every_component.keras"
    model.save(path)
    return model, path


def test_every_component_round_trip(tmp_path):
    model, path = _trained(tmp_path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    tokens, y = harness.every_component_data()
    def normalized(config):  # tuples and lists compare equal, as in JSON
        return json.loads(json.dumps(config))

    assert normalized(loaded.get_config()) == normalized(model.get_config())
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(harness.to_numpy(a), harness.to_numpy(b))
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(harness.to_numpy(a), harness.to_numpy(b))
    assert int(harness.to_numpy(loaded.optimizer.iterations)) == 4
    for name, out in model.predict(tokens, verbose=0).items():
        np.testing.assert_allclose(loaded.predict(tokens, verbose=0)[name], out, rtol=1e-6)
    # Training resumes from the same state: one more step matches.
    after = [
        m.fit(tokens, y, batch_size=8, epochs=1, shuffle=False, verbose=0).history["loss"][0]
        for m in (model, loaded)
    ]
    np.testing.assert_allclose(after[1], after[0], rtol=1e-5)


def test_tampered_class_name_fails_clearly(tmp_path):
    _, path = _trained(tmp_path)
    tampered = tmp_path / "tampered.keras"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tampered, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "config.json":
                config = data.decode()
                assert '"keras_addons_qa>MaskedAttentionPooling"' in config
                data = (
                    config.replace('"MaskedAttentionPooling"', '"MaskedAttentionPoolingX"')
                    .replace(
                        '"keras_addons_qa>MaskedAttentionPooling"',
                        '"keras_addons_qa>MaskedAttentionPoolingX"',
                    )
                    .encode()
                )
            dst.writestr(item, data)
    with pytest.raises((TypeError, ValueError)) as info:
        keras.saving.load_model(tampered, safe_mode=True)
    message = str(info.value)
    assert "MaskedAttentionPoolingX" in message
    assert "Could not locate class" in message or "not found" in message.lower() or "unknown" in message.lower(), message


def test_registered_names_are_in_the_package_namespace(tmp_path):
    _, path = _trained(tmp_path)
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
    names = set()

    def walk(node):
        if isinstance(node, dict):
            if "registered_name" in node and str(node["registered_name"]).startswith("keras_addons_qa"):
                names.add(node["registered_name"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    assert {
        "keras_addons_qa>QKVAttention",
        "keras_addons_qa>ActivityPenalty",
        "keras_addons_qa>MaskedAttentionPooling",
        "keras_addons_qa>NonNegative",
        "keras_addons_qa>MonotoneGroupedSoftmax",
        "keras_addons_qa>AlmostOneHotEmbeddingLoss",
    } <= names


def test_no_lambda_layers_or_pickled_code():
    sources = list((ROOT / "keras_addons_qa").rglob("*.py")) + list(
        (ROOT / "examples").glob("*.py")
    )
    assert sources
    for path in sources:
        text = path.read_text()
        for banned in ("layers.Lambda", "Lambda(", "import pickle", "marshal", "dill"):
            assert banned not in text, f"{banned!r} in {path.relative_to(ROOT)}"


def test_loading_without_importing_the_package_names_it(tmp_path):
    # Keras imports a saved class's module by itself only for its own
    # packages (keras, keras_hub, keras_cv, keras_nlp); for any other it
    # raises. Its message then quotes the layer's config, whose
    # `registered_name` and `module` name this package: what a user needs
    # to learn to `import keras_addons_qa` first.
    import subprocess
    import sys

    tokens = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(20, 8, mask_zero=True)(tokens)
    from keras_addons_qa.layers import QKVAttention

    path = tmp_path / "model.keras"
    keras.Model(tokens, QKVAttention(2, 4)(x, x)).save(path)
    script = (
        "import sys, keras\n"
        "try:\n"
        f"    keras.saving.load_model({str(path)!r})\n"
        "except Exception as error:\n"
        "    print(error)\n"
        "assert 'keras_addons_qa' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Could not locate class 'QKVAttention'" in done.stdout
    assert "'registered_name': 'keras_addons_qa>QKVAttention'" in done.stdout
    assert "'module': 'keras_addons_qa.layers.qkv_attention'" in done.stdout
