"""Keras 3 layers, losses, constraints and CRF functions that core Keras lacks.

Every public class is registered under the package name `keras_addons_qa`, so
models using them load with `keras.saving.load_model(path)` in safe mode and
without `custom_objects`.
"""

from keras_addons_qa import constraints
from keras_addons_qa import layers
from keras_addons_qa import losses
from keras_addons_qa import ops
from keras_addons_qa import text

__version__ = "0.2.0"

__all__ = ["constraints", "layers", "losses", "ops", "text", "__version__"]
