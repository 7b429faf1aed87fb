"""Training across processes, on localhost: the same weights as one process.

A model with every component that trains the same on one device and on
several (`tests/multi_process_worker.py`) takes three SGD steps on the same
global batches:
- TensorFlow: two worker processes under `MultiWorkerMirroredStrategy`
  (`TF_CONFIG` with two 127.0.0.1 ports), the model's own `train_step`
  run by the strategy (Keras 3's `fit` fails there: keras-team/keras#20585);
- JAX: two processes joined by `jax.distributed.initialize` (a 127.0.0.1
  coordinator, CPU collectives over gloo), `fit` under
  `keras.distribution.DataParallel`;
each process on its half of every batch. The weights must equal those of
one process training on the whole batches, within 1e-5. A third test
shards QKVAttention's kernels over four host devices with
`keras.distribution.ModelParallel` and checks outputs and a training step
against the unsharded model.

Each process is bounded in time; these tests are slow (tens of seconds).
"""

import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests import harness

ROOT = pathlib.Path(__file__).resolve().parent.parent
TIMEOUT = 300


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _env(backend, devices=1):
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "XLA_FLAGS")}
    env.update(KERAS_BACKEND=backend, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               CUDA_VISIBLE_DEVICES="")
    return env


def _run(commands, env):
    """Starts every command at once; waits for all, each bounded in time."""
    processes = [
        subprocess.Popen([sys.executable, "-m", "tests.multi_process_worker", *c], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for c in commands
    ]
    outputs = []
    try:
        for p in processes:
            outputs.append(p.communicate(timeout=TIMEOUT)[0])
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
    for p, output in zip(processes, outputs):
        assert p.returncode == 0, output[-4000:]


def _load(path):
    with np.load(path) as data:
        return [data[f"arr_{i}"] for i in range(len(data.files))]


def _assert_same_training(single, distributed):
    assert len(single) == len(distributed)
    for a, b in zip(single, distributed):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


def _distributed_equals_single(mode, backend, tmp_path):
    _run([["single", str(tmp_path / "single.npz")]], _env(backend))
    ports = _free_ports(2 if mode == "tf" else 1)
    _run(
        [[mode, str(i), "2", *map(str, ports), str(tmp_path / f"worker{i}.npz")] for i in range(2)],
        _env(backend),
    )
    single = _load(tmp_path / "single.npz")
    initial = _load(tmp_path / "single_initial.npz")
    assert max(float(np.abs(a - b).max()) for a, b in zip(single, initial)) > 1e-3  # it trained
    workers = [_load(tmp_path / f"worker{i}.npz") for i in range(2)]
    _assert_same_training(single, workers[0])
    _assert_same_training(workers[0], workers[1])  # the replicas agree
    return single


@pytest.mark.slow
@harness.tensorflow_only
def test_tensorflow_multi_worker_mirrored_strategy_equals_one_process(tmp_path):
    _distributed_equals_single("tf", "tensorflow", tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(harness.BACKEND != "jax", reason="JAX's multi-process runtime")
def test_jax_multi_process_data_parallel_fit_equals_one_process(tmp_path):
    _distributed_equals_single("jax", "jax", tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(harness.BACKEND != "jax", reason="keras.distribution.ModelParallel runs on JAX")
def test_model_parallel_sharded_attention_equals_unsharded(tmp_path):
    _run([["model_parallel", str(tmp_path / "mp.npz")]], _env("jax", devices=4))
    with np.load(tmp_path / "mp.npz") as data:
        assert int(data["shards"]) == 2  # the heads are split in two
        np.testing.assert_allclose(data["outputs_sharded"], data["outputs_plain"], rtol=1e-5, atol=1e-6)
        count = sum(1 for k in data.files if k.startswith("plain_"))
        assert count > 10
        for i in range(count):
            np.testing.assert_allclose(data[f"sharded_{i}"], data[f"plain_{i}"], rtol=1e-5, atol=1e-6)
