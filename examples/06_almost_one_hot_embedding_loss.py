# %% [markdown]
# # Training towards a word's embedding with `AlmostOneHotEmbeddingLoss`
#
# **Author:** keras_addons_qa contributors<br>
# **Date created:** 2026-11-22<br>
# **Last modified:** 2026-11-22<br>
# **Description:** Predict a word through its embedding vector with a
# differentiable "argmax then look up", without NaNs or a tiled matrix.
#
# The questions, from Q&A sites: *"Softmax to one-hot, multiply by my embedding
# matrix, compare with the target vector"*: the argmax has no gradient, so
# the accepted answer sharpens the softmax with `p ** power / sum(p ** power)`
# and notes two problems: *"Setting my_power too high will result in NaNs"*
# and, for batches, tiling the embedding matrix once per example, which is
# *"memory-hungry"*. `AlmostOneHotEmbeddingLoss` sharpens in log space
# (`softmax(power * log p)`, which never forms `p ** power`) and maps the
# whole batch through the matrix with one product.
#
# Run it as a script (`python examples/06_almost_one_hot_embedding_loss.py
# [--quick] [--output-dir DIR]`) or open it as a notebook.

# %%
import argparse
import os

import keras
import matplotlib.pyplot as plt
import numpy as np
from keras import ops

from keras_addons_qa.losses import AlmostOneHotEmbeddingLoss

parser = argparse.ArgumentParser()
parser.add_argument("--quick", action="store_true", help="small run, < 60 s")
parser.add_argument("--output-dir", default=os.path.join("examples", "output"))
args, _ = parser.parse_known_args()  # tolerate Jupyter's own arguments
QUICK = args.quick or os.environ.get("KAQ_TUTORIAL_QUICK") == "1"
os.makedirs(args.output_dir, exist_ok=True)
keras.utils.set_random_seed(0)

# %% [markdown]
# ## Data: guess the word from a noisy context, score it by its vector
#
# `vocab` words have fixed unit-length embedding vectors (think frozen
# word2vec). Each example is a noisy 32-number "context" of one word; the
# target is that word's embedding vector, not its id.

# %%
vocab, dim = (200, 16) if QUICK else (500, 32)
rng = np.random.default_rng(0)
embedding = rng.normal(size=(vocab, dim)).astype("float32")
embedding /= np.linalg.norm(embedding, axis=-1, keepdims=True)
context_of = rng.normal(size=(vocab, 32)).astype("float32")


def make_words(n):
    words = rng.integers(0, vocab, size=n)
    contexts = context_of[words] + 0.7 * rng.normal(size=(n, 32)).astype("float32")
    return contexts, embedding[words], words


x_train, y_train, w_train = make_words(8000 if QUICK else 20000)
x_test, y_test, w_test = make_words(2000)
epochs = 6 if QUICK else 15

# %% [markdown]
# ## Accuracy vs `power`
#
# `power=1` compares the *average* embedding under the softmax with the
# target. Raising `power` compares a vector closer to the embedding of the
# argmax word. One thing to know before tuning it: on a softmax output,
# `p ** power / sum(p ** power)` is exactly `softmax(power * logits)`, so
# `power` acts as an inverse temperature on the last layer. It does not
# change what the model can express, only how training moves: a large
# `power` makes the compared distribution one-hot early, and the gradient
# for every other word vanishes. The measurement below shows the trade-off
# for a fixed budget of epochs.

# %%
def train(power):
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [
            keras.Input((32,)),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(vocab, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(2e-3),
        loss=AlmostOneHotEmbeddingLoss(embedding, power=power),
    )
    model.fit(x_train, y_train, epochs=epochs, batch_size=64, verbose=0)
    probs = model.predict(x_test, verbose=0)
    accuracy = float(np.mean(np.argmax(probs, -1) == w_test))
    top_mass = float(np.mean(np.max(probs, -1)))
    return accuracy, top_mass, probs


powers = [1.0, 2.0, 4.0, 16.0] if QUICK else [1.0, 2.0, 4.0, 8.0, 16.0, 64.0]
accuracy, test_probs = {}, {}
for power in powers:
    accuracy[power], top_mass, test_probs[power] = train(power)
    print(
        f"power {power:5g}: word accuracy {accuracy[power]:.3f}   "
        f"mean top probability {top_mass:.3f}"
    )

# %% [markdown]
# The temperature view, checked: sharpening a softmax by `power` gives the
# softmax of `power` times the logits.

# %%
logits = rng.normal(scale=3.0, size=(8, vocab)).astype("float32")
sharpened = AlmostOneHotEmbeddingLoss(embedding, power=4.0).sharpen(
    ops.softmax(logits)
)
gap = float(np.max(np.abs(ops.convert_to_numpy(sharpened - ops.softmax(4.0 * logits)))))
print(f"max |sharpen(softmax(z), 4) - softmax(4 z)| = {gap:.1e}")

# %% [markdown]
# ## The NaN of the textbook recipe
#
# Take the trained model's softmax on the test set and sharpen it with
# rising powers: the question's `p ** power / sum(p ** power)` in float32, and
# the loss's own `sharpen` (log space). We count rows that contain a NaN.

# %%
probs = test_probs[powers[-1]]
check_powers = [4, 16, 64, 256, 1000]
nan_rows = {"naive": [], "ours": []}
for power in check_powers:
    lifted = probs.astype("float32") ** power
    with np.errstate(invalid="ignore"):  # 0 / 0: the NaN we are counting
        naive = lifted / lifted.sum(-1, keepdims=True)
    ours = ops.convert_to_numpy(
        AlmostOneHotEmbeddingLoss(embedding, power=power).sharpen(probs)
    )
    nan_rows["naive"].append(float(np.mean(np.isnan(naive).any(-1))))
    nan_rows["ours"].append(float(np.mean(np.isnan(ours).any(-1))))
    print(
        f"power {power:5d}: rows with NaN  naive {nan_rows['naive'][-1]:6.1%}"
        f"   log-space {nan_rows['ours'][-1]:6.1%}"
    )

# %% [markdown]
# ## Memory: tiling the matrix per example vs one product
#
# The question's batched version reshapes the sharpened softmax to
# `(batch, 1, vocab)`, tiles the matrix to `(batch, vocab, dim)` and uses
# `matmul`. The loss instead computes `(batch, vocab) @ (vocab, dim)`. Both
# give the same vectors; the largest tensor each one builds:

# %%
batch = 64
q = ops.convert_to_tensor(probs[:batch])
matrix = ops.convert_to_tensor(embedding)
tiled = ops.tile(matrix[None], (batch, 1, 1))
asked_vectors = ops.matmul(q[:, None, :], tiled)[:, 0, :]
our_vectors = ops.matmul(q, matrix)
gap = float(np.max(np.abs(ops.convert_to_numpy(asked_vectors - our_vectors))))
tiled_bytes = int(np.prod(tiled.shape)) * 4
ours_bytes = max(batch * vocab, vocab * dim) * 4
print(
    f"batch {batch}: tiled tensor {tiled_bytes / 1e6:.2f} MB vs largest tensor "
    f"of ours {ours_bytes / 1e6:.3f} MB ({tiled_bytes / ours_bytes:.0f}x); "
    f"same vectors (max gap {gap:.1e})"
)

# %% [markdown]
# ## Figure

# %%
plt.rcParams.update({"font.size": 11, "axes.titlesize": 11, "legend.fontsize": 10,
                     "figure.facecolor": "white", "savefig.facecolor": "white"})
fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), layout="constrained")
axes[0].plot(powers, [accuracy[p] for p in powers], "o-")
axes[0].set_xscale("log", base=2)
axes[0].set_xticks(powers, [f"{p:g}" for p in powers])
axes[0].set_ylim(0, 1)
axes[0].set_xlabel("power (the loss's sharpening exponent, log scale)")
axes[0].set_ylabel("test word accuracy (argmax = true word)")
axes[0].set_title(f"Word accuracy after {epochs} epochs of training\n"
                  f"with AlmostOneHotEmbeddingLoss(power)")
# At low powers both recipes give 0% and their points coincide: the question's
# are drawn as large open squares around ours.
axes[1].plot(check_powers, np.array(nan_rows["naive"]) * 100, "s-", color="tab:red",
             mfc="none", ms=12, mew=1.5, label="p**power / sum(p**power) (the question's)")
axes[1].plot(check_powers, np.array(nan_rows["ours"]) * 100, "o-", color="tab:green",
             ms=5, label="log space (the loss's sharpen)")
axes[1].set_xscale("log")
axes[1].set_xticks(check_powers, [str(p) for p in check_powers])
axes[1].set_ylim(-5, 105)
axes[1].set_xlabel("power (log scale)")
axes[1].set_ylabel("test rows with a NaN (%)")
axes[1].legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
axes[1].set_title(f"Sharpening the trained softmax (power {powers[-1]:g} model)\n"
                  "in float32: rows that turn into NaN")
path = os.path.join(args.output_dir, "06_almost_one_hot_embedding_loss.png")
fig.savefig(path, dpi=120)
print("figure:", path)

# %% [markdown]
# ## What to take away
#
# - Sharpening before the embedding lookup turns "compare the average
#   vector" into "compare the chosen word's vector". On a softmax output it
#   is an inverse temperature: pick `power` by validation, and expect large
#   values to train slowly.
# - In log space any `power` is safe. `iterations` sharpenings equal one
#   with `power ** iterations` (each normalization is a shift, which the
#   next softmax ignores); the loss computes that one softmax, on `log p`
#   shifted to a maximum of 0, so even an overflowing power stays finite.
# - A model that ends in a softmax can drop it and pass `from_logits=True`:
#   same loss, one `(batch, vocab)` buffer less in training.
# - One matrix product for the whole batch: memory grows with
#   `batch * vocab`, not `batch * vocab * dim`.

# %%
print(
    "RESULT word acc by power "
    + ", ".join(f"{p:g}: {a:.2f}" for p, a in accuracy.items())
    + f"; NaN rows at power 1000: naive "
    f"{nan_rows['naive'][-1]:.0%}, ours {nan_rows['ours'][-1]:.0%}; "
    f"tiled {tiled_bytes / ours_bytes:.0f}x more memory"
)
