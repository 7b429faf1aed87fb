"""Test configuration: backend choice and two logical CPUs for TensorFlow.

The TensorFlow backend is the default. On it, the host CPU is split into two
logical devices before TensorFlow initializes, so that tests can run
`tf.distribute.MirroredStrategy` over two replicas on one machine.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

if keras.backend.backend() == "tensorflow":
    import tensorflow as tf

    _cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        _cpus[0],
        [tf.config.LogicalDeviceConfiguration()] * 2,
    )
