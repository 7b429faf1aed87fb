# %% [markdown]
# # Penalizing an intermediate layer with `ActivityPenalty`
#
# **Author:** keras_addons_qa contributors<br>
# **Date created:** 2026-11-22<br>
# **Last modified:** 2026-11-22<br>
# **Description:** Make a hidden code sparse by penalizing the layer's output,
# not its weights, and see the penalty in the `fit` logs.
#
# The question, from a Q&A site: *"I would like to add another term to the loss function
# that minimizes the squared sum of the output at a given layer."* The usual
# answer is to make that layer a second model output and give it a loss
# against dummy zero targets. `ActivityPenalty` does it in place: put it
# after the layer, and its penalty joins the model's loss through `add_loss`.
#
# Run it as a script (`python examples/01_activity_penalty.py [--quick]
# [--output-dir DIR]`) or open it as a notebook.

# %%
import argparse
import os
import time

import keras
import matplotlib.pyplot as plt
import numpy as np

from keras_addons_qa.layers import ActivityPenalty

parser = argparse.ArgumentParser()
parser.add_argument("--quick", action="store_true", help="small run, < 60 s")
parser.add_argument("--output-dir", default=os.path.join("examples", "output"))
args, _ = parser.parse_known_args()  # tolerate Jupyter's own arguments
QUICK = args.quick or os.environ.get("KAQ_TUTORIAL_QUICK") == "1"
os.makedirs(args.output_dir, exist_ok=True)
keras.utils.set_random_seed(0)

# %% [markdown]
# ## Data: three classes decided by four of twenty features
#
# Most inputs are noise, so a good hidden code needs only a few active units.

# %%
rng = np.random.default_rng(0)
n_train, n_test, n_features, hidden = (1500 if QUICK else 6000), 2000, 20, 64
mixing = np.zeros((n_features, 3), "float32")
mixing[:4] = rng.normal(size=(4, 3))
x_all = rng.normal(size=(n_train + n_test, n_features)).astype("float32")
y_all = np.argmax(x_all @ mixing, axis=-1)
x_train, y_train = x_all[:n_train], y_all[:n_train]
x_test, y_test = x_all[n_train:], y_all[n_train:]
epochs = 8 if QUICK else 30


# %% [markdown]
# ## The model: `ActivityPenalty` right after the layer we want sparse
#
# The layer is the identity on its input; it adds
# `l1 * sum(|h|) / batch_size` to the loss. It computes in float32, so it
# also works under `mixed_float16`, and it ignores masked steps.


# %%
def build_model(l1):
    inputs = keras.Input((n_features,))
    code = keras.layers.Dense(hidden, activation="relu", name="code")(inputs)
    code = ActivityPenalty(l1=l1, name="penalty")(code)
    outputs = keras.layers.Dense(3, activation="softmax")(code)
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def code_of(model, x):
    """The hidden code, read through a sub-model (no Lambda, no copies)."""
    probe = keras.Model(model.inputs, model.get_layer("code").output)
    return probe.predict(x, verbose=0)


def summarize(name, model, codes, seconds):
    accuracy = model.evaluate(x_test, y_test, verbose=0)[-1]
    zeros = float(np.mean(codes == 0.0))
    active = float(np.mean(np.sum(codes > 0, axis=-1)))
    print(
        f"{name:<28} test acc {accuracy:.3f}  zero activations {zeros:6.1%}"
        f"  active units/example {active:5.1f}  fit {seconds:5.1f} s"
    )
    return {"accuracy": accuracy, "zeros": zeros, "active": active}


# %% [markdown]
# ## Sweep the L1 factor
#
# `l1=0` is the plain network. As `l1` grows the code gets sparser; accuracy
# holds until the penalty starts to starve the classifier.

# %%
l1_values = [0.0, 1e-3, 1e-2, 3e-2] if QUICK else [0.0, 1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]
results, codes = {}, {}
for l1 in l1_values:
    keras.utils.set_random_seed(1)
    model = build_model(l1)
    start = time.perf_counter()
    history = model.fit(x_train, y_train, epochs=epochs, batch_size=64, verbose=0)
    seconds = time.perf_counter() - start
    codes[l1] = code_of(model, x_test)
    results[l1] = summarize(f"ActivityPenalty(l1={l1:g})", model, codes[l1], seconds)

# %% [markdown]
# ## The penalty is in the `fit` logs
#
# `fit` reports the compiled loss *plus* every `add_loss` term. Take the last
# model: its reported loss minus the cross-entropy alone is the penalty, and
# it equals what the layer computes for the same batch.

# %%
batch_x, batch_y = x_train[:256], y_train[:256]
reported = model.evaluate(batch_x, batch_y, batch_size=256, verbose=0)[0]
predictions = model.predict(batch_x, verbose=0)
crossentropy = float(
    np.mean(
        keras.ops.convert_to_numpy(
            keras.losses.sparse_categorical_crossentropy(batch_y, predictions)
        )
    )
)
penalty = float(
    keras.ops.convert_to_numpy(
        model.get_layer("penalty").penalty(code_of(model, batch_x))
    )
)
print(
    f"fit-reported loss {reported:.5f} = cross-entropy {crossentropy:.5f}"
    f" + penalty {penalty:.5f} (difference {reported - crossentropy - penalty:+.1e})"
)

# %% [markdown]
# ## The question's way: a second output with dummy zero targets
#
# The answer usually given makes the hidden layer a model output and puts an
# L1 loss on it against a target array of zeros. It reaches the same kind of
# code, but every batch now carries `batch x 64` fake targets, the model has
# two outputs to keep in sync, and the layer cannot be reused elsewhere.


# %%
class L1OfOutput(keras.losses.Loss):
    """`l1 * sum(|h|)` per example; y_true is ignored (it is the dummy)."""

    def __init__(self, l1, **kwargs):
        super().__init__(**kwargs)
        self.l1 = l1

    def call(self, y_true, y_pred):
        return self.l1 * keras.ops.sum(keras.ops.abs(y_pred), axis=-1)


chosen = 1e-3
keras.utils.set_random_seed(1)
inputs = keras.Input((n_features,))
code = keras.layers.Dense(hidden, activation="relu", name="code")(inputs)
outputs = keras.layers.Dense(3, activation="softmax", name="label")(code)
two_output = keras.Model(inputs, {"label": outputs, "code": code})
two_output.compile(
    optimizer=keras.optimizers.Adam(3e-3),
    loss={"label": "sparse_categorical_crossentropy", "code": L1OfOutput(chosen)},
    metrics={"label": ["accuracy"]},
)
dummy = np.zeros((n_train, hidden), "float32")
start = time.perf_counter()
two_output.fit(
    x_train, {"label": y_train, "code": dummy}, epochs=epochs, batch_size=64, verbose=0
)
seconds = time.perf_counter() - start
naive_codes = code_of(two_output, x_test)
naive_accuracy = float(
    np.mean(np.argmax(two_output.predict(x_test, verbose=0)["label"], -1) == y_test)
)
print(
    f"{'two outputs + dummy targets':<28} test acc {naive_accuracy:.3f}  zero "
    f"activations {np.mean(naive_codes == 0):6.1%}  fit {seconds:5.1f} s  "
    f"dummy targets {dummy.nbytes / 1e6:.2f} MB"
)

# %% [markdown]
# ## Histogram of the hidden code
#
# Without the penalty most units fire for most inputs; with it the mass piles
# up at exactly zero.

# %%
plt.rcParams.update({"font.size": 11, "axes.titlesize": 11, "legend.fontsize": 10,
                     "figure.facecolor": "white", "savefig.facecolor": "white"})
fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), layout="constrained")
bins = np.linspace(0, max(float(codes[l1].max()) for l1 in (0.0, 1e-2)), 61)
for l1, color in ((0.0, "tab:blue"), (1e-2, "tab:orange")):
    # Outlined histograms, so neither hides the other.
    axes[0].hist(codes[l1].ravel(), bins=bins, histtype="step", lw=1.8, color=color,
                 log=True, label=f"l1={l1:g}: {results[l1]['zeros']:.0%} exactly zero")
axes[0].set_xlabel("hidden activation (ReLU output)")
axes[0].set_ylabel("count over test set x 64 units (log scale)")
axes[0].legend(loc="upper right")
axes[0].set_title(f"Hidden code on the {len(x_test)} test examples")
shown_l1 = [max(v, 1e-5) for v in l1_values]
axes[1].plot(shown_l1, [results[v]["zeros"] for v in l1_values], "o-",
             label="fraction of zero activations")
axes[1].plot(shown_l1, [results[v]["accuracy"] for v in l1_values], "s-",
             label="test accuracy")
axes[1].set_xscale("log")
axes[1].set_ylim(0, 1.05)
axes[1].set_xlabel("ActivityPenalty l1 (log scale; l1=0 drawn at 1e-5)")
axes[1].set_ylabel("fraction")
axes[1].legend(loc="lower right")
axes[1].grid(alpha=0.3)
axes[1].set_title("Sparsity and accuracy vs l1")
fig.suptitle("ActivityPenalty(l1) after a Dense(64, relu) layer: "
             "how sparse the code gets, and what it costs", fontsize=12)
path = os.path.join(args.output_dir, "01_activity_penalty.png")
fig.savefig(path, dpi=120)
print("figure:", path)

# %% [markdown]
# ## What to take away
#
# - One layer, placed after the representation you want to shape, adds its
#   penalty to the loss: no second output, no dummy targets.
# - The value `fit` reports includes it, so you see the trade-off while
#   training.

# %%
base, best = results[0.0], results[l1_values[-1]]
print(
    f"RESULT zero activations {base['zeros']:.0%} -> {best['zeros']:.0%} "
    f"(l1={l1_values[-1]:g}), test acc {base['accuracy']:.3f} -> {best['accuracy']:.3f}"
)
