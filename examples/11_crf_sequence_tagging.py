# %% [markdown]
# # Sequence tagging with a CRF: BIO tags that stay valid
#
# **Author:** keras_addons_qa contributors<br>
# **Date created:** 2026-11-30<br>
# **Last modified:** 2026-11-30<br>
# **Description:** A BiLSTM tagger with a per-token softmax against the
# same BiLSTM with a `CRF` layer on top, on synthetic named-entity data in
# BIO tags: token accuracy, span F1, and how many invalid tag transitions
# each produces.
#
# In BIO tagging, `I-X` may only follow `B-X` or `I-X`. A per-token
# softmax picks each tag on its own and can break that rule, splitting or
# mixing entities; a linear-chain CRF scores whole tag sequences, learns
# transition scores, and decodes the best valid-looking sequence with
# Viterbi. This is the BiLSTM + CRF of the Keras Q&A threads, which used
# TensorFlow Addons (`tfa.layers.CRF`, `tfa.text.crf_log_likelihood`);
# `keras_addons_qa.layers.CRF` trains with a plain `compile` and `fit`,
# and its decoding is part of the model.
#
# Run it as a script (`python examples/11_crf_sequence_tagging.py
# [--quick] [--output-dir DIR]`) or open it as a notebook.

# %%
import argparse
import os

import keras
import matplotlib.pyplot as plt
import numpy as np

import keras_addons_qa as kaq

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
# Sentences of filler words with one to three entities of three types. The
# words of a name come from one pool shared by all types, so a name alone
# does not say its type: a cue does, and it sits at one end of the span
# ("mr" before a person, "in" before a place, "city" as a place's last
# word, "inc" as an organization's last word). One entity in six has no
# cue, and its type is a guess: a tagger that guesses each word on its own
# can mix two types inside one name.

# %%
TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
PAD, FILLER, NAMES = 0, range(1, 31), range(31, 91)
MR, IN, CITY, INC = 91, 92, 93, 94
VOCABULARY, MAX_LEN = 95, 32


def sentence():
    words, tags = [], []
    for _ in range(rng.integers(1, 4)):
        for _ in range(rng.integers(1, 5)):
            words.append(int(rng.choice(FILLER)))
            tags.append(0)
        kind = int(rng.integers(0, 3))  # 0 PER, 1 LOC, 2 ORG
        names = [int(rng.choice(NAMES)) for _ in range(rng.integers(1, 4))]
        cue = rng.random() > 1 / 6
        if cue and kind == 0:
            words.append(MR)
            tags.append(0)
        if cue and kind == 1 and rng.random() < 0.5:
            words.append(IN)
            tags.append(0)
        elif cue and kind == 1:
            names.append(CITY)
        if cue and kind == 2:
            names.append(INC)
        words += names
        tags += [1 + 2 * kind] + [2 + 2 * kind] * (len(names) - 1)
    words, tags = words[:MAX_LEN], tags[:MAX_LEN]
    pad = MAX_LEN - len(words)
    return words + [PAD] * pad, tags + [0] * pad


count = 1500 if QUICK else 5000
tokens, tags = (np.array(a, "int32") for a in zip(*(sentence() for _ in range(count))))
split = int(0.8 * count)
print(f"{count} sentences, {int((tokens != PAD).sum())} tokens, "
      f"{int(np.isin(tags, (1, 3, 5)).sum())} entities")

# %% [markdown]
# ## Two taggers
#
# The same embedding and bidirectional LSTM. One ends in a `Dense` softmax
# over the tags, trained with cross-entropy; the other in `CRF`, trained
# with `CRFLoss` on the layer's `"potentials"` output. The CRF layer also
# returns `"tags"`, the Viterbi path, which is what `predict` (and an
# exported model) gives.

# %%


def encoder():
    inputs = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(VOCABULARY, 32, mask_zero=True)(inputs)
    x = keras.layers.Bidirectional(keras.layers.LSTM(32, return_sequences=True))(x)
    return inputs, x


keras.utils.set_random_seed(1)
inputs, x = encoder()
softmax_model = keras.Model(inputs, keras.layers.Dense(len(TAGS), activation="softmax")(x))
softmax_model.compile(keras.optimizers.Adam(5e-3), "sparse_categorical_crossentropy")

keras.utils.set_random_seed(1)
inputs, x = encoder()
crf_model = keras.Model(inputs, kaq.layers.CRF(len(TAGS), name="crf")(x))
crf_model.compile(keras.optimizers.Adam(5e-3), loss={"potentials": kaq.losses.CRFLoss()})

epochs = 6 if QUICK else 12
for model in (softmax_model, crf_model):
    model.fit(tokens[:split], tags[:split], epochs=epochs, batch_size=32, verbose=0)

# %% [markdown]
# ## Scores
#
# Token accuracy over the real words; span F1 over exact (start, end,
# type) entities, read from the tags the way the CoNLL evaluation reads
# them (an `I-X` that does not continue an `X` starts a new entity); and
# invalid transitions, an `I-X` after anything but `B-X` or `I-X`.

# %%


def spans(row):
    found, start, kind = set(), None, None
    for t, tag in enumerate(list(row) + [0]):
        name = TAGS[tag]
        continues = name.startswith("I-") and kind == name[2:]
        if start is not None and not continues:
            found.add((start, t, kind))
            start, kind = None, None
        if name != "O" and not continues:
            start, kind = t, name[2:]
    return found


def invalid(row):
    return sum(
        TAGS[b].startswith("I-") and TAGS[a][2:] != TAGS[b][2:]
        for a, b in zip([0] + list(row[:-1]), row)
    )


def scores(predicted, gold, words):
    valid = words != PAD
    predicted = np.where(valid, predicted, 0)
    hits = found = wanted = 0
    for p, g in zip(predicted, gold):
        p, g = spans(p), spans(g)
        hits, found, wanted = hits + len(p & g), found + len(p), wanted + len(g)
    precision, recall = hits / max(found, 1), hits / max(wanted, 1)
    return {
        "token accuracy": float(np.mean(predicted[valid] == gold[valid])),
        "span F1": 2 * precision * recall / max(precision + recall, 1e-9),
        "invalid transitions": int(sum(invalid(row) for row in predicted)),
    }


test_tokens, test_tags = tokens[split:], tags[split:]
results = {
    "BiLSTM + softmax": scores(
        np.argmax(softmax_model.predict(test_tokens, verbose=0), axis=-1), test_tags, test_tokens
    ),
    "BiLSTM + CRF": scores(crf_model.predict(test_tokens, verbose=0)["tags"], test_tags, test_tokens),
}
for name, result in results.items():
    print(f"{name:>16}: token accuracy {result['token accuracy']:.4f}, span F1 "
          f"{result['span F1']:.4f}, invalid transitions {result['invalid transitions']}")

# %% [markdown]
# ## What the CRF learned
#
# The transition scores, `[previous tag, next tag]`, learned from the data
# alone: the moves BIO forbids (into `I-X` from anything but `B-X` /
# `I-X`) end up lower on average (the printed means), most clearly the
# ones the encoder would otherwise make.

# %%
transitions = keras.ops.convert_to_numpy(crf_model.get_layer("crf").chain_kernel)
forbidden = np.array([[TAGS[j].startswith("I-") and TAGS[i][2:] != TAGS[j][2:] for j in range(7)]
                      for i in range(7)])
print(f"mean transition score: forbidden {transitions[forbidden].mean():.2f}, "
      f"allowed {transitions[~forbidden].mean():.2f}")

# %% [markdown]
# ## Deploying: the decoding is part of the model
#
# `keras.Model(crf_model.input, crf_model.output["tags"])` is a model from
# words to tags; `model.export(...)` writes it with the Viterbi loop
# inside (SavedModel, LiteRT builtins, ONNX; the test suite runs each).

# %%
deployed = keras.Model(crf_model.input, crf_model.output["tags"])
example = test_tokens[:1]
length = int((example != PAD).sum())
print("words:", example[0, :length].tolist())
print("gold: ", [TAGS[t] for t in test_tags[0, :length]])
print("CRF:  ", [TAGS[t] for t in deployed.predict(example, verbose=0)[0, :length]])

# %%
from matplotlib.colors import CenteredNorm
from matplotlib.ticker import MaxNLocator

plt.rcParams.update({"font.size": 11, "axes.titlesize": 11, "legend.fontsize": 10,
                     "figure.facecolor": "white", "savefig.facecolor": "white"})
fig, (bars, moves, heat) = plt.subplots(
    1, 3, figsize=(12, 5), layout="constrained",
    gridspec_kw={"width_ratios": [1.1, 0.7, 1.2]},
)
names = list(results)
colors = ["tab:blue", "tab:orange"]
metrics = ["token accuracy", "span F1"]
width = 0.38
for k, name in enumerate(names):
    values = [results[name][m] for m in metrics]
    drawn = bars.bar(np.arange(2) + (k - 0.5) * width, values, width, label=name, color=colors[k])
    bars.bar_label(drawn, fmt="%.3f", padding=2)
bars.set_xticks(np.arange(2), metrics)
bars.set_ylim(0, 1.25)
bars.set_yticks(np.arange(0, 1.01, 0.2))
bars.set_ylabel("score on held-out sentences")
bars.legend(loc="upper center", ncol=1)
bars.set_title(f"Scores on {len(test_tokens)} held-out sentences")
counts = [results[n]["invalid transitions"] for n in names]
drawn = moves.bar(range(2), counts, color=colors)
moves.bar_label(drawn)
moves.set_xticks(range(2), ["BiLSTM\n+ softmax", "BiLSTM\n+ CRF"])
moves.set_ylabel("invalid transitions (count)")
moves.set_ylim(0, max(counts) * 1.2 + 1)
moves.yaxis.set_major_locator(MaxNLocator(integer=True))
moves.set_title("Invalid BIO transitions\n(I-X after anything but B-X / I-X)")
image = heat.imshow(transitions, cmap="coolwarm_r", norm=CenteredNorm(0.0))
fig.colorbar(image, ax=heat, shrink=0.9,
             label="learned transition score\n(red: discouraged, blue: encouraged)")
heat.set_xticks(range(7), TAGS, rotation=45, ha="right")
heat.set_yticks(range(7), TAGS)
heat.set_xlabel("next tag")
heat.set_ylabel("previous tag")
for i, j in zip(*np.nonzero(forbidden)):
    heat.text(j, i, "x", ha="center", va="center", fontsize=11, color="black")
heat.set_title("CRF transition scores learned from data\n(x: a move BIO forbids)")
fig.suptitle("BiLSTM tagger on synthetic named-entity sentences (BIO tags): "
             "per-token softmax vs CRF", fontsize=12)
path = os.path.join(args.output_dir, "11_crf_sequence_tagging.png")
fig.savefig(path, dpi=120)
print("figure:", path)

# %% [markdown]
# ## What to take away
#
# - `CRF(num_tags)` on top of any sequence encoder, `CRFLoss()` on its
#   `"potentials"` output, and a plain `fit(x, tags)`: no custom training
#   step. Padding is read from the Keras mask.
# - The CRF learns which tag moves never happen and its Viterbi decoding
#   avoids them; the per-token softmax has no notion of a move. The
#   printed numbers above give the difference on this data.

# %%
softmax, crf = results["BiLSTM + softmax"], results["BiLSTM + CRF"]
print(
    f"RESULT span F1 softmax {softmax['span F1']:.3f} vs CRF {crf['span F1']:.3f}; "
    f"invalid transitions {softmax['invalid transitions']} vs {crf['invalid transitions']}"
)
