# %% [markdown]
# # Weight normalization: a small conv net with and without it
#
# **Author:** keras_addons_qa contributors<br>
# **Date created:** 2026-11-29<br>
# **Last modified:** 2026-11-29<br>
# **Description:** `WeightNormalization` (TensorFlow Addons' most missed
# wrapper) on a small convolutional classifier trained with plain SGD, side
# by side with the same network without it: loss curves, and what the
# data-dependent initialization does to the first batch.
#
# Weight normalization (Salimans and Kingma, 2016) writes each unit's
# weight vector as a length `g` times a direction `v / ||v||`, and learns
# both. With `data_init=True`, the first batch it sees sets `g` and the
# bias so that every unit's pre-activation starts with zero mean and unit
# variance. `tfa.layers.WeightNormalization` was the usual way to get it in
# Keras; TensorFlow Addons is no longer maintained and its wrapper does not
# run under Keras 3. `keras_addons_qa.layers.WeightNormalization` takes the
# same arguments.
#
# Run it as a script (`python examples/10_weight_normalization.py
# [--quick] [--output-dir DIR]`) or open it as a notebook.

# %%
import argparse
import os

import keras
import matplotlib.pyplot as plt
import numpy as np

from keras_addons_qa.layers import WeightNormalization

parser = argparse.ArgumentParser()
parser.add_argument("--quick", action="store_true", help="small run, < 60 s")
parser.add_argument("--output-dir", default=os.path.join("examples", "output"))
args, _ = parser.parse_known_args()  # tolerate Jupyter's own arguments
QUICK = args.quick or os.environ.get("KAQ_TUTORIAL_QUICK") == "1"
os.makedirs(args.output_dir, exist_ok=True)
rng = np.random.default_rng(0)

# %% [markdown]
# ## The data
#
# 16 x 16 images of one of four shapes (a horizontal bar, a vertical bar,
# a square, a cross) at a random place, in noise.

# %%
SIZE, CLASSES = 16, 4


def image(kind):
    out = np.zeros((SIZE, SIZE), "float32")
    r, c = rng.integers(3, SIZE - 4, size=2)
    if kind == 0:
        out[r, c - 3 : c + 4] = 1
    elif kind == 1:
        out[r - 3 : r + 4, c] = 1
    elif kind == 2:
        out[r - 2 : r + 3, c - 2 : c + 3] = 1
    else:
        out[r, c - 2 : c + 3] = 1
        out[r - 2 : r + 3, c] = 1
    return out


count = 1200 if QUICK else 4000
labels = rng.integers(0, CLASSES, size=count)
images = np.stack([image(k) for k in labels])[..., None]
images = 3 * images + rng.normal(size=images.shape).astype("float32")
split = int(0.8 * count)

# %% [markdown]
# ## Two networks, one optimizer
#
# The same architecture, initial weights and plain SGD; one wraps its
# convolutions and its hidden dense layer in `WeightNormalization`.

# %%


def network(normalized):
    keras.utils.set_random_seed(1)
    wrap = WeightNormalization if normalized else (lambda layer: layer)
    inputs = keras.Input((SIZE, SIZE, 1))
    x = wrap(keras.layers.Conv2D(16, 3, activation="relu"))(inputs)
    x = keras.layers.MaxPooling2D()(x)
    x = wrap(keras.layers.Conv2D(32, 3, activation="relu"))(x)
    x = keras.layers.GlobalMaxPooling2D()(x)
    x = wrap(keras.layers.Dense(32, activation="relu"))(x)
    model = keras.Model(inputs, keras.layers.Dense(CLASSES)(x))
    model.compile(
        keras.optimizers.SGD(0.01, momentum=0.9),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


epochs = 6 if QUICK else 20
histories = {}
for normalized in (False, True):
    model = network(normalized)
    history = model.fit(
        images[:split], labels[:split], validation_data=(images[split:], labels[split:]),
        epochs=epochs, batch_size=64, verbose=0,
    )
    name = "WeightNormalization" if normalized else "plain"
    histories[name] = history.history
    print(f"{name:>19}: training loss {history.history['loss'][0]:.3g} (epoch 1) -> "
          f"{history.history['loss'][-1]:.3g} (epoch {epochs}); held-out accuracy "
          f"{history.history['val_accuracy'][-1]:.3f}")
    if normalized:
        first = model.layers[1]
        lengths = keras.ops.convert_to_numpy(first.g) + keras.ops.convert_to_numpy(first.g_init)
        initialized = bool(keras.ops.convert_to_numpy(first.initialized))
        print(f"  first conv after training: initialized={initialized}, "
              f"mean unit length g + g_init {float(np.mean(lengths)):.3f}")

# %% [markdown]
# ## What the data-dependent initialization does
#
# A fresh wrapped convolution, called once on a batch: its pre-activations
# (before the ReLU) have zero mean and unit variance per channel on that
# batch, whatever the scale of the input. The plain layer's are as far off
# as the input is.

# %%
batch = images[:64]
plain = keras.layers.Conv2D(16, 3)
wrapped = WeightNormalization(keras.layers.Conv2D(16, 3))
plain_out = keras.ops.convert_to_numpy(plain(batch))
wrapped_out = keras.ops.convert_to_numpy(wrapped(batch))
print(f"plain Conv2D pre-activations: mean {plain_out.mean():.2f}, std {plain_out.std():.2f}")
print(f"WeightNormalization(Conv2D):  mean {wrapped_out.mean():.3f}, "
      f"per-channel std {wrapped_out.std(axis=(0, 1, 2)).mean():.3f}")

# %%
plt.rcParams.update({"font.size": 11, "axes.titlesize": 11, "legend.fontsize": 10,
                     "figure.facecolor": "white", "savefig.facecolor": "white"})
fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4.8), layout="constrained")
for (name, history), marker in zip(histories.items(), ("o", "s")):
    loss_ax.plot(np.arange(1, epochs + 1), history["loss"], marker=marker, ms=4, label=name)
    acc_ax.plot(np.arange(1, epochs + 1), history["val_accuracy"], marker=marker, ms=4,
                label=name)
loss_ax.set_yscale("log")
loss_ax.set_ylabel("training loss (cross-entropy, log scale)")
loss_ax.set_title("Training loss per epoch")
acc_ax.set_ylabel(f"held-out accuracy ({count - split} images)")
acc_ax.set_title("Held-out accuracy per epoch")
for axis in (loss_ax, acc_ax):
    axis.set_xlabel("epoch")
    step = 2 if epochs > 10 else 1
    axis.set_xticks(range(step, epochs + 1, step))
    axis.grid(alpha=0.3)
fig.legend(*loss_ax.get_legend_handles_labels(), loc="outside lower center", ncol=2,
           frameon=False)
fig.suptitle("The same conv net on noisy 16x16 shapes (4 classes), same initial weights,\n"
             "SGD (lr 0.01, momentum 0.9): plain vs WeightNormalization", fontsize=12)
path = os.path.join(args.output_dir, "10_weight_normalization.png")
fig.savefig(path, dpi=120)
print("figure:", path)

# %% [markdown]
# ## What to take away
#
# - `WeightNormalization(layer)` wraps a `Dense` or a convolution with
#   TensorFlow Addons' arguments; the first batch it sees initializes it
#   (`data_init=True`), once, and a saved model keeps that.
# - It is a reparameterization, not a guaranteed speedup: compare the two
#   curves on your own network. On this small one, with this optimizer,
#   the printed numbers above say which trains faster.

# %%
print(
    f"RESULT final training loss plain {histories['plain']['loss'][-1]:.2g} vs "
    f"weight-normalized {histories['WeightNormalization']['loss'][-1]:.2g}; held-out "
    f"accuracy {histories['plain']['val_accuracy'][-1]:.3f} vs "
    f"{histories['WeightNormalization']['val_accuracy'][-1]:.3f}"
)
