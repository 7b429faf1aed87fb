"""Keras's own MultiHeadAttention test file, run against QKVAttention.

The file ships inside the installed `keras` wheel
(`keras/src/layers/attention/multi_head_attention_test.py`). It is read from
there when this test runs, and nothing of it is kept in this repository:
every `layers.MultiHeadAttention` in it becomes `QKVAttention` (the class is
the only change), and pytest runs the result in a fresh process on the
current backend. Keras skips its two flash-attention tests on TensorFlow,
where Keras has no flash attention; everything else must pass.
"""

import os
import pathlib
import re
import subprocess
import sys

import keras
import pytest

from tests import harness

ROOT = pathlib.Path(__file__).resolve().parent.parent
KERAS_TESTS = (
    pathlib.Path(keras.__file__).resolve().parent
    / "src" / "layers" / "attention" / "multi_head_attention_test.py"
)


@pytest.mark.skipif(
    not KERAS_TESTS.exists(), reason="this keras wheel ships without its tests"
)
def test_keras_multi_head_attention_tests_pass_with_the_class_swapped(tmp_path):
    source = KERAS_TESTS.read_text()
    swapped, count = re.subn(r"\blayers\.MultiHeadAttention\b", "QKVAttention", source)
    assert count >= 40  # the file still constructs the layer throughout
    module = tmp_path / "test_swapped_multi_head_attention.py"
    module.write_text("from keras_addons_qa.layers import QKVAttention\n" + swapped)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "-W", "ignore", "-rs", str(module)],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )
    summary = done.stdout[-3000:] + done.stderr[-3000:]
    assert done.returncode == 0, summary
    passed = int(re.search(r"(\d+) passed", done.stdout).group(1))
    skipped = re.search(r"(\d+) skipped", done.stdout)
    skipped = int(skipped.group(1)) if skipped else 0
    if harness.BACKEND == "tensorflow":
        assert skipped == 2 and "Flash attention only supported" in done.stdout, summary
    else:
        assert skipped == 0, summary
    assert passed >= 48, summary
