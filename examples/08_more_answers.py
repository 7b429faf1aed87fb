# %% [markdown]
# # Four more answers: locality in attention, the VAE sampler, decomposed convolutions, pretrained embeddings
#
# **Author:** keras_addons_qa contributors<br>
# **Date created:** 2026-11-23<br>
# **Last modified:** 2026-11-23<br>
# **Description:** `QKVAttention(distance_penalty=...)`, `GaussianSampling`,
# `DecomposedConv2D` and `PretrainedEmbedding`, each on a small task that
# shows what it is for.
#
# Each section answers a question asked on a Q&A site:
#
# 1. *"What is attention penalty in speech transformer paper?"*:
#    "we encouraged the model attending to closer positions by adding bigger
#    penalty on the attention weights of more distant position-pairs".
# 2. *"Explaining Variational Autoencoder gaussian
#    parameterization"*: the reparameterization trick and its KL term.
# 3. *"How to implement the DecomposeMe architecture?"*: a 2D
#    convolution as a `(k, 1)` and a `(1, k)` convolution with a
#    non-linearity between.
# 4. *"Weights update in Tensorflow embedding layer with
#    pretrained fasttext weights"*: fine-tuning moves the vectors of the
#    words the task sees and leaves the others, so words never seen in
#    training stop matching. The accepted answer's option (b): a frozen
#    pretrained matrix plus a small trainable table for frequent words.
#
# Run it as a script (`python examples/08_more_answers.py [--quick]
# [--output-dir DIR]`) or open it as a notebook.

# %%
import argparse
import os

import keras
import matplotlib.pyplot as plt
import numpy as np
from keras import ops

from keras_addons_qa.layers import DecomposedConv2D
from keras_addons_qa.layers import GaussianSampling
from keras_addons_qa.layers import PretrainedEmbedding
from keras_addons_qa.layers import QKVAttention

parser = argparse.ArgumentParser()
parser.add_argument("--quick", action="store_true", help="small run, < 60 s")
parser.add_argument("--output-dir", default=os.path.join("examples", "output"))
args, _ = parser.parse_known_args()  # tolerate Jupyter's own arguments
QUICK = args.quick or os.environ.get("KAQ_TUTORIAL_QUICK") == "1"
os.makedirs(args.output_dir, exist_ok=True)
rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. `distance_penalty`: locality without positional encodings
#
# The target at step `i` is the mean of the inputs at `i - 1`, `i` and
# `i + 1`. Self-attention alone is permutation-invariant: with no
# positional encoding it cannot tell a neighbour from any other step.
# Subtracting `distance_penalty * |i - j|` from the logits builds locality
# in (Speech-Transformer's penalty), and a very large penalty would make
# attention the identity.

# %%
length = 24
x_seq = rng.normal(size=(1200 if QUICK else 4000, length, 1)).astype("float32")
padded = np.pad(x_seq[..., 0], ((0, 0), (1, 1)))
y_seq = ((padded[:, :-2] + padded[:, 1:-1] + padded[:, 2:]) / 3)[..., None]
split = int(0.8 * len(x_seq))
penalty_mse, near_share = {}, {}
for penalty in (0.0, 2.0):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((length, 1))
    hidden = keras.layers.Dense(16)(inputs)
    attention = QKVAttention(2, 8, distance_penalty=penalty)
    hidden = attention(hidden, hidden)
    model = keras.Model(inputs, keras.layers.Dense(1)(hidden))
    model.compile(keras.optimizers.Adam(3e-3), "mse")
    model.fit(x_seq[:split], y_seq[:split], epochs=8 if QUICK else 20, batch_size=32, verbose=0)
    penalty_mse[penalty] = model.evaluate(x_seq[split:], y_seq[split:], verbose=0)
    projected = model.layers[1](x_seq[:1])  # the Dense(16) before attention
    _, scores = attention(projected, projected, return_attention_scores=True)
    near = np.abs(np.arange(length)[:, None] - np.arange(length)[None, :]) <= 1
    share = float(ops.convert_to_numpy(scores)[0][:, near].sum() / (2 * length))
    near_share[penalty] = share
    print(f"distance_penalty={penalty}: test MSE {penalty_mse[penalty]:.4f} "
          f"(target variance {y_seq.var():.4f}); attention mass within 1 step {share:.0%}")

# %% [markdown]
# ## 2. `GaussianSampling`: a VAE whose prior samples land on the data
#
# Data lie on a circle embedded in 8-D. The encoder gives `mean` and
# `log_var` of a 2-D code; `GaussianSampling` draws `z = mean + exp(log_var
# / 2) * eps` in training, returns `mean` at inference, and adds the KL
# term to the loss itself, so plain `fit` trains the VAE. With
# `kl_weight=0` it is an autoencoder with noisy codes: its codes go where
# they like, and decoding samples of `N(0, 1)` gives points off the data.

# %%
n_points = 2000 if QUICK else 6000
angles = rng.uniform(0, 2 * np.pi, n_points)
basis = np.linalg.qr(rng.normal(size=(8, 2)))[0]
circle = np.stack([np.cos(angles), np.sin(angles)], 1) @ basis.T
circle = (circle + 0.02 * rng.normal(size=circle.shape)).astype("float32")


def distance_to_circle(points):
    plane = points @ basis
    off_plane = np.linalg.norm(points - plane @ basis.T, axis=1)
    return np.sqrt((np.linalg.norm(plane, axis=1) - 1) ** 2 + off_plane**2)


def reconstruction(y_true, y_pred):  # Gaussian decoder, sigma = 0.5
    return 2.0 * ops.sum(ops.square(y_true - y_pred), axis=-1)


vae_results, prior_samples = {}, {}
for kl_weight in (0.0, 1.0):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(64, activation="relu")(inputs)
    mean, log_var = keras.layers.Dense(2)(hidden), keras.layers.Dense(2)(hidden)
    code = GaussianSampling(kl_weight=kl_weight, seed=1)([mean, log_var])
    decoder = keras.Sequential(
        [keras.Input((2,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(8)]
    )
    vae = keras.Model(inputs, decoder(code))
    vae.compile(keras.optimizers.Adam(3e-3), reconstruction)
    vae.fit(circle, circle, epochs=12 if QUICK else 30, batch_size=64, verbose=0)
    codes = keras.Model(inputs, mean).predict(circle, verbose=0)
    generated = decoder.predict(rng.normal(size=(2000, 2)).astype("float32"), verbose=0)
    vae_results[kl_weight] = float(np.median(distance_to_circle(generated)))
    print(f"kl_weight={kl_weight}: codes mean {codes.mean(0).round(2)}, std "
          f"{codes.std(0).round(2)}; decoded prior samples: median distance to "
          f"the data circle {vae_results[kl_weight]:.3f}")
    prior_samples[kl_weight] = generated[:400]

# %% [markdown]
# ## 3. `DecomposedConv2D`: a 3x3 convolution from 3x1 and 1x3 parts
#
# Four classes of noisy oriented gratings (16x16). The same small network
# three ways: `Conv2D` everywhere; `DecomposedConv2D` in the second and
# third blocks (the first layer sees one channel, where the default
# `min(channels, filters)` middle width would be a 1-channel bottleneck, so
# it stays a `Conv2D`, as is usual); and a narrower `Conv2D` with about the
# same parameter count as the decomposed one, for a fair comparison.

# %%
side = 16
rows, cols = np.mgrid[0:side, 0:side]


def gratings(n):
    labels = rng.integers(0, 4, n)
    images = np.empty((n, side, side, 1), "float32")
    for k, label in enumerate(labels):
        coordinate = (rows, cols, rows + cols, rows - cols)[label]
        phase, frequency = rng.uniform(0, 2 * np.pi), rng.uniform(0.5, 1.2)
        images[k, ..., 0] = np.sin(frequency * coordinate + phase)
    return images + rng.normal(scale=2.5, size=images.shape).astype("float32"), labels


x_img, y_img = gratings(1000 if QUICK else 3000)
x_img_test, y_img_test = gratings(1000)


def convnet(block, widths=(16, 32, 32)):
    inputs = keras.Input((side, side, 1))
    hidden = keras.layers.Conv2D(widths[0], 3, padding="same", activation="relu")(inputs)
    hidden = keras.layers.MaxPooling2D()(hidden)
    hidden = block(widths[1])(hidden)
    hidden = keras.layers.MaxPooling2D()(hidden)
    hidden = block(widths[2])(hidden)
    hidden = keras.layers.GlobalAveragePooling2D()(hidden)
    return keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(hidden))


def conv(filters):
    return keras.layers.Conv2D(filters, 3, padding="same", activation="relu")


def decomposed(filters):
    return keras.Sequential(
        [DecomposedConv2D(filters, 3, padding="same"), keras.layers.ReLU()]
    )


conv_results = {}
for name, network in (
    ("Conv2D", lambda: convnet(conv)),
    ("DecomposedConv2D", lambda: convnet(decomposed)),
    ("narrow Conv2D", lambda: convnet(conv, (16, 22, 24))),
):
    keras.utils.set_random_seed(0)
    model = network()
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x_img, y_img, epochs=6 if QUICK else 12, batch_size=64, verbose=0)
    accuracy = model.evaluate(x_img_test, y_img_test, verbose=0)[1]
    conv_results[name] = (model.count_params(), accuracy)
    print(f"{name:17s} parameters {model.count_params():6d}   test accuracy {accuracy:.3f}")

# %% [markdown]
# ## 4. `PretrainedEmbedding`: learn the frequent words, keep the rest
#
# 2000 words with "pretrained" vectors; a sentence's label is the sign of
# the sum of its words' scores, where a word's score is its vector's
# projection on a hidden direction, plus a task-specific twist (+-2) for the
# 100 most frequent words (what the pretrained vectors cannot know).
# Training sentences use only the first 1000 words; the second test set
# uses only the other 1000, never seen in training. Three embeddings:
#
# - **frozen** `Embedding`: cannot learn the twists;
# - **fine-tuned** `Embedding` (initialized with the vectors): learns them,
#   but moves the seen words' vectors, so the unseen ones no longer match;
# - `PretrainedEmbedding(vectors, trainable_tokens=100, trainable_dim=4)`:
#   the vectors stay, and 4 trainable dimensions for the 100 frequent words
#   carry the twists.

# %%
vocab, dim, words = 2000, 16, 8
vectors = rng.normal(size=(vocab, dim)).astype("float32")
score = vectors @ rng.normal(size=dim) / np.sqrt(dim)
frequent = 100
twist = np.zeros(vocab)
twist[:frequent] = rng.choice([-2.0, 2.0], frequent)
weight = np.r_[np.full(frequent, 20.0), np.ones(vocab - frequent)]


def sentences(n, allowed):
    ids = rng.choice(allowed, size=(n, words), p=weight[allowed] / weight[allowed].sum())
    return ids, ((score[ids] + twist[ids]).sum(1) > 0).astype("float32")


x_txt, y_txt = sentences(3000 if QUICK else 6000, np.arange(1000))
x_seen, y_seen = sentences(2000, np.arange(1000))
x_unseen, y_unseen = sentences(2000, np.arange(1000, vocab))

embedding_results = {}
for name in ("frozen", "fine-tuned", "PretrainedEmbedding"):
    keras.utils.set_random_seed(0)
    if name == "PretrainedEmbedding":
        embedding = PretrainedEmbedding(vectors, trainable_tokens=frequent, trainable_dim=4)
    else:
        embedding = keras.layers.Embedding(vocab, dim, trainable=name == "fine-tuned")
        embedding.build()
        embedding.embeddings.assign(vectors)
    inputs = keras.Input((words,), dtype="int32")
    hidden = keras.layers.GlobalAveragePooling1D()(embedding(inputs))
    hidden = keras.layers.Dense(32, activation="relu")(hidden)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(hidden))
    model.compile(keras.optimizers.Adam(3e-3), "binary_crossentropy", metrics=["accuracy"])
    model.fit(x_txt, y_txt, epochs=8 if QUICK else 15, batch_size=32, verbose=0)
    seen = model.evaluate(x_seen, y_seen, verbose=0)[1]
    unseen = model.evaluate(x_unseen, y_unseen, verbose=0)[1]
    drift = float(np.abs(ops.convert_to_numpy(embedding.embeddings) - vectors).max())
    embedding_results[name] = (seen, unseen)
    print(f"{name:20s} accuracy: seen words {seen:.3f}, never-seen words {unseen:.3f}; "
          f"max change of the pretrained vectors {drift:.3f}")

# %% [markdown]
# ## The four results in one figure

# %%
plt.rcParams.update({"font.size": 11, "axes.titlesize": 11, "legend.fontsize": 10,
                     "figure.facecolor": "white", "savefig.facecolor": "white"})
fig, axes = plt.subplots(2, 2, figsize=(11, 9.5), layout="constrained")
axes = axes.ravel()

# 1. distance_penalty
drawn = axes[0].bar([0, 1], [penalty_mse[0.0], penalty_mse[2.0]], color=["C7", "C0"],
                    width=0.6)
axes[0].bar_label(drawn, [f"MSE {penalty_mse[p]:.3f}\n{near_share[p]:.0%} of attention"
                          f"\nwithin 1 step" for p in (0.0, 2.0)], padding=3)
axes[0].axhline(y_seq.var(), color="k", ls="--", lw=1,
                label=f"predicting the mean (target variance {y_seq.var():.3f})")
axes[0].set_xticks([0, 1], ["distance_penalty=0\n(plain attention)", "distance_penalty=2"])
axes[0].set_ylim(0, y_seq.var() * 1.45)
axes[0].set_ylabel("test MSE")
axes[0].legend(loc="upper right")
axes[0].set_title("1. QKVAttention, no positional encoding:\n"
                  "learn a 3-step moving average")

# 2. GaussianSampling
angle = np.linspace(0, 2 * np.pi, 200)
axes[1].plot(np.cos(angle), np.sin(angle), "k", lw=1.5, label="the data\n(a unit circle)")
for (kl_weight, points), marker in zip(prior_samples.items(), ("o", "^")):
    kind = "autoencoder" if kl_weight == 0 else "VAE"
    axes[1].scatter(*(points @ basis).T, s=9, alpha=0.6, marker=marker,
                    label=f"kl_weight={kl_weight:g}\n({kind}):\nmedian distance\n"
                          f"to the data {vae_results[kl_weight]:.2f}")
axes[1].set_aspect("equal")
axes[1].set_xlabel("coordinate 1 in the data's plane")
axes[1].set_ylabel("coordinate 2 in the data's plane")
axes[1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False,
               title="decoded\nz ~ N(0, I),\n400 of each", title_fontsize=10,
               labelspacing=1.0)
axes[1].set_title("2. GaussianSampling: decoding samples of the prior\n"
                  "(8-D outputs, projected on the data's plane)")

# 3. DecomposedConv2D
names = list(conv_results)
drawn = axes[2].bar(range(3), [conv_results[n][0] for n in names], color=["C7", "C0", "C1"],
                    width=0.6)
axes[2].bar_label(drawn, [f"{conv_results[n][0]:,} params\ntest acc {conv_results[n][1]:.3f}"
                          for n in names], padding=3)
axes[2].set_xticks(range(3), ["Conv2D", "Decomposed-\nConv2D", "narrow Conv2D\n(same size)"])
axes[2].set_ylim(0, max(v[0] for v in conv_results.values()) * 1.3)
axes[2].set_ylabel("trainable parameters")
axes[2].set_title("3. DecomposedConv2D: 4 classes of noisy gratings\n"
                  "(bars: size; labels: size and test accuracy)")

# 4. PretrainedEmbedding
positions = np.arange(3)
for offset, index, label in ((-0.2, 0, "sentences of seen words"),
                             (0.2, 1, "sentences of never-seen words")):
    drawn = axes[3].bar(positions + offset,
                        [embedding_results[n][index] for n in embedding_results],
                        width=0.4, label=label)
    axes[3].bar_label(drawn, fmt="%.2f", padding=2)
axes[3].set_xticks(positions, ["frozen\nEmbedding", "fine-tuned\nEmbedding",
                               "Pretrained-\nEmbedding"])
axes[3].set_ylim(0.5, 1.06)
axes[3].set_ylabel("test accuracy (0.5 = chance)")
axes[3].legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
axes[3].set_title("4. PretrainedEmbedding: frozen vectors + trainable dims\n"
                  "for the 100 frequent words; 8-word sentences")
path = os.path.join(args.output_dir, "08_more_answers.png")
fig.savefig(path, dpi=120)
print("figure:", path)

# %% [markdown]
# ## What to take away
#
# - `distance_penalty` is a prior, not a mask: attention still learns, but
#   starts from "nearby matters", which is what a position-free model needs
#   for local patterns.
# - `GaussianSampling` carries the whole VAE trick (sampling, the mean at
#   inference, the KL term through `add_loss`), so a VAE is a plain
#   functional model trained with `fit`.
# - `DecomposedConv2D` has the output shape of `Conv2D` with fewer
#   parameters; here it trains to an accuracy close to the full `Conv2D`
#   (the numbers above say how close, and how a narrow `Conv2D` of the same
#   size does: on this small task the decomposition is not a free win).
# - `PretrainedEmbedding` keeps the pretrained space intact for words the
#   task never shows, and still learns what the task needs for the frequent
#   ones.

# %%
print(
    f"RESULT distance_penalty MSE {penalty_mse[2.0]:.3f} vs {penalty_mse[0.0]:.3f}; "
    f"VAE prior-sample distance {vae_results[1.0]:.3f} vs AE {vae_results[0.0]:.3f}; "
    f"DecomposedConv2D {conv_results['DecomposedConv2D'][0]} vs "
    f"{conv_results['Conv2D'][0]} params; PretrainedEmbedding never-seen "
    f"{embedding_results['PretrainedEmbedding'][1]:.3f} vs fine-tuned "
    f"{embedding_results['fine-tuned'][1]:.3f}"
)
