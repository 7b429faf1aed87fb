"""Test configuration: backend choice and two devices on one CPU.

The TensorFlow backend is the default. On it, the host CPU is split into two
logical devices before TensorFlow initializes, so that tests can run
`tf.distribute.MirroredStrategy` over two replicas on one machine. On JAX,
XLA is asked for two host devices, for `keras.distribution.DataParallel`.
"""

import os
import zlib

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if os.environ["KERAS_BACKEND"] == "jax":
    _flag = "--xla_force_host_platform_device_count=2"
    if _flag not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()

import keras  # noqa: E402
import pytest  # noqa: E402

if keras.backend.backend() == "tensorflow":
    import tensorflow as tf

    _cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        _cpus[0],
        [tf.config.LogicalDeviceConfiguration()] * 2,
    )


@pytest.fixture(autouse=True)
def _seed_per_test(request):
    """Every test starts from its own fixed seed, made from its id.

    Layers built without a seed draw their initial weights from the global
    generators; seeded here, every tolerance check reads the same numbers in
    every run, alone or in the full suite, in any order.
    """
    keras.utils.set_random_seed(zlib.crc32(request.node.nodeid.encode()) % 2**31)


def pytest_terminal_summary(terminalreporter):
    """Reports how many hypothesis cases each property test ran."""
    import sys

    module = sys.modules.get("tests.test_properties")
    counts = getattr(module, "CASES_RUN", None)
    if counts:
        summary = ", ".join(f"{name} {count}" for name, count in sorted(counts.items()))
        terminalreporter.write_line(
            f"property cases run: {summary} (total {sum(counts.values())})"
        )
