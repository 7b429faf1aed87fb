# %% [markdown]
# # Sequence tagging with a CRF: BIO tags that stay valid
#
# **Author:** keras_addons_qa contributors<br>
# **Date created:** 2026-11-30<br>
# **Last modified:** 2026-12-06<br>
# **Description:** A BiLSTM tagger with a per-token softmax against the
# same BiLSTM with a `CRF` layer on top, learned and constrained to BIO,
# on synthetic named-entity data: token accuracy, span F1, invalid tag
# transitions, the best few readings of an ambiguous sentence, and how far
# each tag's probability can be trusted.
#
# In BIO tagging, `I-X` may only follow `B-X` or `I-X`. A per-token
# softmax picks each tag on its own and can break that rule, splitting or
# mixing entities; a linear-chain CRF scores whole tag sequences, learns
# transition scores, and decodes the best valid-looking sequence with
# Viterbi. This is the BiLSTM + CRF of the Keras Q&A threads, which used
# TensorFlow Addons (`tfa.layers.CRF`, `tfa.text.crf_log_likelihood`);
# `keras_addons_qa.layers.CRF` trains with a plain `compile` and `fit`,
# and its decoding is part of the model. Told the tagging scheme
# (`allowed_transitions=("BIO", TAGS)`), it cannot produce an invalid
# sequence at all, and its per-tag probabilities (`return_marginals=True`)
# say how sure it is.
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
from keras_addons_qa import text

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
# ## Three taggers
#
# The same embedding and bidirectional LSTM. One ends in a `Dense` softmax
# over the tags, trained with cross-entropy; the others in `CRF`, trained
# with `CRFLoss` on the layer's `"potentials"` output. The CRF layer also
# returns `"tags"`, the Viterbi path, which is what `predict` (and an
# exported model) gives. The third CRF knows the BIO scheme: the moves it
# forbids get no probability in training and are never decoded; it also
# returns `"marginals"`, each tag's posterior probability.

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

keras.utils.set_random_seed(1)
inputs, x = encoder()
constrained = kaq.layers.CRF(len(TAGS), allowed_transitions=("BIO", TAGS), return_marginals=True,
                             name="constrained_crf")
constrained_model = keras.Model(inputs, constrained(x))
features = keras.Model(inputs, x)  # the encoder the constrained CRF reads
constrained_model.compile(keras.optimizers.Adam(5e-3), loss={"potentials": kaq.losses.CRFLoss()})

epochs = 6 if QUICK else 12
for model in (softmax_model, crf_model, constrained_model):
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
softmax_probs = softmax_model.predict(test_tokens, verbose=0)
constrained_out = constrained_model.predict(test_tokens, verbose=0)
results = {
    "BiLSTM + softmax": scores(np.argmax(softmax_probs, axis=-1), test_tags, test_tokens),
    "BiLSTM + CRF": scores(crf_model.predict(test_tokens, verbose=0)["tags"], test_tags, test_tokens),
    "BiLSTM + BIO-constrained CRF": scores(constrained_out["tags"], test_tags, test_tokens),
}
for name, result in results.items():
    print(f"{name:>28}: token accuracy {result['token accuracy']:.4f}, span F1 "
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
# ## Several readings of an ambiguous sentence
#
# A name without a cue could be of any type. `text.crf_top_k_decode`
# gives the best few tag sequences with their scores; divided by the
# partition function (`text.crf_log_norm`) they are probabilities. The
# functions take the constrained layer's own scores: its `Dense` tag
# scores, and its transitions with what BIO forbids set to -1e30
# (`text.allowed_transitions`). Below, the held-out sentence whose decoded
# tags the model is least sure of (its lowest marginal).

# %%
layer = constrained_model.get_layer("constrained_crf")
allowed, start_ok, end_ok = text.allowed_transitions("BIO", TAGS)
transitions_bio = np.where(allowed, keras.ops.convert_to_numpy(layer.chain_kernel), -1e30)
start_bio = np.where(start_ok, keras.ops.convert_to_numpy(layer.left_boundary), -1e30)
end_bio = np.where(end_ok, keras.ops.convert_to_numpy(layer.right_boundary), -1e30)
words_mask = test_tokens != PAD
decoded = constrained_out["tags"]
picked = np.take_along_axis(constrained_out["marginals"], decoded[..., None], axis=-1)[..., 0]
unsure = int(np.argmin(np.where(words_mask, picked, 1.0).min(axis=1)))
length = int(words_mask[unsure].sum())
unary = keras.ops.convert_to_numpy(layer.dense(features.predict(test_tokens[unsure:unsure + 1], verbose=0)))
best_paths, best_scores = text.crf_top_k_decode(unary, transitions_bio, [length], 3, start_bio, end_bio)
log_z = text.crf_log_norm(unary, [length], transitions_bio, start_bio, end_bio)
best_paths, probabilities = (keras.ops.convert_to_numpy(a)[0] for a in (
    best_paths, keras.ops.exp(best_scores - log_z[:, None])))
print("gold:  ", " ".join(TAGS[t] for t in test_tags[unsure, :length]))
for rank, (path, probability) in enumerate(zip(best_paths, probabilities), 1):
    print(f"top {rank} (p = {probability:.3f}):", " ".join(TAGS[t] for t in path[:length]))

# %% [markdown]
# ## How far to trust a tag: the marginals
#
# `"marginals"` is each tag's posterior probability under the whole
# sequence model. Grouping the held-out tags by the probability the model
# gave its chosen tag, a calibrated model is right that often: 90 % of
# the tags it gives 0.9 are correct. The same for the softmax's
# probability of its arg-max. The expected calibration error (the mean
# gap, weighted by the tags in each bin) sums it up: what a confidence
# threshold, or an active-learning loop that asks for labels where the
# model is least sure, relies on.

# %%
bins = np.linspace(0.0, 1.0, 11)


def reliability(confidence, correct):
    which = np.clip(np.digitize(confidence, bins) - 1, 0, len(bins) - 2)
    counts = np.bincount(which, minlength=len(bins) - 1)
    accuracy = np.bincount(which, correct, minlength=len(bins) - 1) / np.maximum(counts, 1)
    mean_confidence = np.bincount(which, confidence, minlength=len(bins) - 1) / np.maximum(counts, 1)
    error = np.sum(counts * np.abs(accuracy - mean_confidence)) / counts.sum()
    return mean_confidence, accuracy, counts, error


calibration = {
    "BiLSTM + softmax": reliability(softmax_probs.max(axis=-1)[words_mask],
                                    (softmax_probs.argmax(axis=-1) == test_tags)[words_mask]),
    "BiLSTM + BIO-constrained CRF": reliability(picked[words_mask], (decoded == test_tags)[words_mask]),
}
for name, (_, _, _, error) in calibration.items():
    print(f"{name:>28}: expected calibration error {error:.4f}")
marginal_sums = constrained_out["marginals"].sum(axis=-1)
print(f"marginals sum to 1 at every word: {np.allclose(marginal_sums[words_mask], 1.0, atol=1e-4)}, "
      f"0 at padding: {np.all(marginal_sums[~words_mask] == 0)}")

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
fig, ((bars, moves), (heat, trust)) = plt.subplots(
    2, 2, figsize=(12, 10), layout="constrained", gridspec_kw={"width_ratios": [1.3, 1]},
)
names = list(results)
colors = ["tab:blue", "tab:orange", "tab:green"]
metrics = ["token accuracy", "span F1"]
width = 0.27
for k, name in enumerate(names):
    values = [results[name][m] for m in metrics]
    drawn = bars.bar(np.arange(2) + (k - 1) * width, values, width, label=name, color=colors[k])
    bars.bar_label(drawn, fmt="%.3f", padding=3, fontsize=9, rotation=90)
bars.set_xticks(np.arange(2), metrics)
bars.set_ylim(0, 1.4)
bars.set_yticks(np.arange(0, 1.01, 0.2))
bars.set_ylabel("score on held-out sentences")
bars.legend(loc="upper center", ncol=1)
bars.set_title(f"Scores on {len(test_tokens)} held-out sentences")
counts = [results[n]["invalid transitions"] for n in names]
drawn = moves.bar(range(3), counts, color=colors)
moves.bar_label(drawn)
moves.set_xticks(range(3), ["BiLSTM\n+ softmax", "BiLSTM\n+ CRF", "BiLSTM + CRF\nconstrained to BIO"])
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
trust.plot([0, 1], [0, 1], color="gray", linestyle=":", label="calibrated")
for (name, (confidence, accuracy, counts, error)), color in zip(calibration.items(), ["tab:blue", "tab:green"]):
    seen = counts > 0
    trust.plot(confidence[seen], accuracy[seen], marker="o", color=color,
               label=f"{name.removeprefix('BiLSTM + ')}\n(calibration error {error:.3f})")
trust.set_xlim(0, 1.02)
trust.set_ylim(0, 1.02)
trust.set_xlabel("probability given to the chosen tag (bin mean)")
trust.set_ylabel("share of those tags that are right")
trust.legend(loc="upper left")
trust.set_title("How far to trust a tag: reliability on held-out words\n"
                "(CRF: its marginals; softmax: its arg-max probability)")
fig.suptitle("BiLSTM tagger on synthetic named-entity sentences (BIO tags): "
             "per-token softmax vs CRF, learned and constrained", fontsize=12)
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
# - `allowed_transitions=("BIO", TAGS)` makes an invalid sequence
#   impossible, in training and in the exported model alike.
# - `text.crf_top_k_decode` lists the next-best readings with their
#   probabilities, and `return_marginals=True` gives each tag's
#   probability, for thresholds and active learning.

# %%
softmax, crf = results["BiLSTM + softmax"], results["BiLSTM + CRF"]
bio = results["BiLSTM + BIO-constrained CRF"]
print(
    f"RESULT span F1 softmax {softmax['span F1']:.3f} vs CRF {crf['span F1']:.3f}; "
    f"invalid transitions {softmax['invalid transitions']} vs {crf['invalid transitions']}; "
    f"constrained CRF span F1 {bio['span F1']:.3f}, invalid transitions {bio['invalid transitions']}"
)
