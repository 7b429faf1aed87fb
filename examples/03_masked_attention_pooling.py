# %% [markdown]
# # Attention pooling that cannot see padding: `MaskedAttentionPooling`
#
# **Author:** keras_addons_qa contributors<br>
# **Date created:** 2026-11-22<br>
# **Last modified:** 2026-11-22<br>
# **Description:** Classify variable-length sequences with attention pooling,
# and measure what happens when the softmax also covers the padding.
#
# The question, from a Q&A site: *"Should RNN attention weights over variable length
# sequences be re-normalized to mask the effects of zero-padding?"* Yes, and
# this tutorial measures why. Attention pooling scores every step,
# `s_t = u . tanh(W h_t + b)`, takes a softmax over time and returns the
# weighted sum. Without a mask, the softmax also gives weight to padded
# steps: the pooled vector, and so the prediction, depends on how much
# padding the batch happened to get. `MaskedAttentionPooling` takes the
# softmax over the real steps only, so padding gets exactly zero weight.
#
# Run it as a script (`python examples/03_masked_attention_pooling.py
# [--quick] [--output-dir DIR]`) or open it as a notebook.

# %%
import argparse
import os

import keras
import matplotlib.pyplot as plt
import numpy as np

from keras_addons_qa.layers import MaskedAttentionPooling

parser = argparse.ArgumentParser()
parser.add_argument("--quick", action="store_true", help="small run, < 60 s")
parser.add_argument("--output-dir", default=os.path.join("examples", "output"))
args, _ = parser.parse_known_args()  # tolerate Jupyter's own arguments
QUICK = args.quick or os.environ.get("KAQ_TUTORIAL_QUICK") == "1"
os.makedirs(args.output_dir, exist_ok=True)
keras.utils.set_random_seed(0)

# %% [markdown]
# ## Data: is the average word score above the median?
#
# Each sequence is 3 to 40 word vectors (8 numbers each, like frozen
# pretrained embeddings) followed by zero vectors up to length 40: the
# zero-padding of the question. A word's score is its projection on a fixed
# direction; a sequence is positive when the mean score of its real words
# is above the median of all sequences. Masking is done the standard Keras
# way, with a `Masking(mask_value=0.0)` layer.

# %%
vocab, dim, max_len = 200, 8, 40
rng = np.random.default_rng(0)
direction = rng.normal(size=dim)
direction /= np.linalg.norm(direction)
word_vectors = rng.normal(size=(vocab, dim)) + direction  # scores ~ N(1, 1)
word_scores = word_vectors @ direction


def make_sequences(n, pad_to):
    lengths = rng.integers(3, max_len + 1, size=n)
    x = np.zeros((n, pad_to, dim), "float32")
    mean_score = np.zeros(n)
    for i, length in enumerate(lengths):
        words = rng.integers(0, vocab, size=length)
        x[i, :length] = word_vectors[words]
        mean_score[i] = word_scores[words].mean()
    return x, mean_score, lengths


x_train, train_scores, _ = make_sequences(3000 if QUICK else 12000, max_len)
x_test, test_scores, len_test = make_sequences(2000, max_len)
threshold = np.median(train_scores)
y_train = (train_scores > threshold).astype("float32")
y_test = (test_scores > threshold).astype("float32")
epochs = 15 if QUICK else 40


# %% [markdown]
# ## The same model, with and without the mask
#
# Both use the same `MaskedAttentionPooling` layer and a logistic read-out;
# the only difference is the `Masking` layer in front. Without it the
# softmax runs over every step, which is what the usual hand-written
# attention does.


# %%
def build_model(masked):
    keras.utils.set_random_seed(1)
    inputs = keras.Input((None, dim))
    h = keras.layers.Masking(mask_value=0.0)(inputs) if masked else inputs
    pooled, weights = MaskedAttentionPooling(32, name="pool")(
        h, return_attention_scores=True
    )
    probability = keras.layers.Dense(1, activation="sigmoid")(pooled)
    model = keras.Model(inputs, probability)
    model.compile(
        optimizer=keras.optimizers.Adam(5e-3),
        loss="binary_crossentropy",
        metrics=["accuracy"],
    )
    attention = keras.Model(inputs, weights)  # shares the layers; for plots
    return model, attention


models = {"unmasked": build_model(False), "masked (ours)": build_model(True)}
for model, _ in models.values():
    model.fit(x_train, y_train, epochs=epochs, batch_size=64, verbose=0)

# %% [markdown]
# ## Side by side
#
# Accuracy on the test set padded like the training data (to 40), and the
# same test sequences padded to 120: a longer bucket, or a batch that
# happens to contain one long sequence. We also report how much attention
# lands on padding and how far the predictions move with the extra padding.

# %%
x_long = np.pad(x_test, [(0, 0), (0, 80), (0, 0)])
summary = {}
for name, (model, attention) in models.items():
    p40 = model.predict(x_test, verbose=0)[:, 0]
    p120 = model.predict(x_long, verbose=0)[:, 0]
    weights = attention.predict(x_test, verbose=0)
    padding = np.arange(max_len)[None, :] >= len_test[:, None]
    on_padding = float(np.mean(np.sum(weights * padding, axis=-1)))
    acc40 = float(np.mean((p40 > 0.5) == y_test))
    acc120 = float(np.mean((p120 > 0.5) == y_test))
    shift = float(np.max(np.abs(p120 - p40)))
    summary[name] = (acc40, acc120, on_padding, shift)
    print(
        f"{name:<14} acc (pad to 40) {acc40:.3f}  acc (pad to 120) {acc120:.3f}"
        f"  attention on padding {on_padding:6.1%}  max |p120 - p40| {shift:.2e}"
    )

# %% [markdown]
# ## Where the attention goes
#
# Each row is one test sequence (sorted by length), each column a time step;
# the white line marks the end of the real steps. The masked layer puts
# exactly zero weight to the right of it.

# %%
from matplotlib.colors import LogNorm
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

plt.rcParams.update({"font.size": 11, "axes.titlesize": 11, "legend.fontsize": 10,
                     "figure.facecolor": "white", "savefig.facecolor": "white"})
order = np.argsort(len_test[:24])
ends = len_test[:24][order]
shown = {name: attention.predict(x_test[:24][order], verbose=0)
         for name, (_, attention) in models.items()}
# A log color scale, so the small weights the unmasked layer spreads over
# many padding steps show; weights that are exactly 0 get their own color.
norm = LogNorm(vmin=1e-4, vmax=max(float(w.max()) for w in shown.values()))
cmap = plt.get_cmap("magma").copy()
cmap.set_bad("#8fd3ff")  # exactly zero
fig, axes = plt.subplots(1, 3, figsize=(12, 5.2), layout="constrained",
                         gridspec_kw={"width_ratios": [1, 1, 0.5]})
for ax, (name, weights) in zip(axes, shown.items()):
    image = ax.imshow(np.ma.masked_equal(weights, 0.0), aspect="auto", cmap=cmap,
                      norm=norm, interpolation="nearest")
    rows = np.arange(24)
    ax.plot(np.repeat(ends - 0.5, 2), np.ravel([rows - 0.5, rows + 0.5], order="F"),
            color="lime", lw=1.5)
    ax.set_title(f"{name}: {summary[name][2]:.1%} of the attention on\n"
                 f"padding (mean over all {len(x_test)} test sequences)")
    ax.set_xlabel("time step")
axes[0].set_ylabel("test sequence (sorted by length)")
axes[1].set_yticklabels([])
fig.colorbar(image, ax=axes[:2], fraction=0.04, pad=0.01,
             label="attention weight (log scale)")
for (name, weights), style in zip(shown.items(), ("o", "x")):
    mass = [weights[k, ends[k]:].sum() * 100 for k in range(24)]
    axes[2].plot(mass, np.arange(24), style, ms=6, label=name)
axes[2].set_ylim(23.5, -0.5)
axes[2].set_yticklabels([])
axes[2].set_xlabel("attention on padding (%)")
axes[2].set_title("same rows: attention\non padding per sequence")
axes[2].grid(alpha=0.3)
axes[2].legend(loc="lower right")
fig.legend(
    [Line2D([], [], color="lime", lw=1.5), Patch(color="#8fd3ff")],
    ["end of the real steps (padding to the right)", "weight exactly 0"],
    loc="outside lower center", ncol=2, frameon=False,
)
fig.get_layout_engine().set(wspace=0.06)
fig.suptitle("Attention weights of MaskedAttentionPooling on 24 test sequences "
             "zero-padded to 40 steps", fontsize=12)
path = os.path.join(args.output_dir, "03_masked_attention_pooling.png")
fig.savefig(path, dpi=120)
print("figure:", path)

# %% [markdown]
# ## What to take away
#
# - Renormalizing over the real steps is not a detail: without it the
#   prediction for a sequence depends on the padding around it.
# - With a `Masking` layer (or `Embedding(mask_zero=True)`) the mask reaches
#   `MaskedAttentionPooling` by itself; you can also pass `mask=` directly.

# %%
un, ours = summary["unmasked"], summary["masked (ours)"]
print(
    f"RESULT acc pad-to-120 {un[1]:.3f} (unmasked) vs {ours[1]:.3f} (masked); "
    f"prediction shift {un[3]:.2f} vs {ours[3]:.1e}"
)
