# %% [markdown]
# # Generating text with a KV cache, and grouped-query heads
#
# **Author:** keras_addons_qa contributors<br>
# **Date created:** 2026-11-29<br>
# **Last modified:** 2026-11-29<br>
# **Description:** A small character-level model built on `QKVAttention`
# (grouped-query heads), trained on generated text, then decoded greedily
# twice: re-running the model over the whole prefix for every new
# character, and feeding one character at a time through a KV cache. Same
# text; the cached step's cost stays flat as the text grows.
#
# Autoregressive generation asks the model for one more token at a time.
# Without a cache, each new token re-runs attention (and every projection)
# over the whole prefix, so the cost of a token grows with the length of
# the text. With a cache, the keys and values of earlier tokens are kept,
# and a step projects only the new token and attends from it.
#
# `QKVAttention` follows KerasHub's `CachedMultiHeadAttention` convention:
# `layer(x, x, cache=cache, cache_update_index=t)` writes the new keys and
# values at position `t` of a `(batch, 2, max_length, key_value_heads,
# key_dim)` cache and returns `(output, cache)`. With
# `num_key_value_heads=2` and 4 query heads, the cache holds 2 heads, half
# of what plain multi-head attention would keep.
#
# The prompts have different lengths and are left-padded (token 0), as a
# batch of prompts is in practice; the padding reaches nothing.
#
# Run it as a script (`python examples/09_decoding_with_a_kv_cache.py
# [--quick] [--output-dir DIR]`) or open it as a notebook.

# %%
import argparse
import os
import time

import keras
import matplotlib.pyplot as plt
import numpy as np
from keras import ops

from keras_addons_qa.layers import QKVAttention

parser = argparse.ArgumentParser()
parser.add_argument("--quick", action="store_true", help="small run, < 60 s")
parser.add_argument("--output-dir", default=os.path.join("examples", "output"))
args, _ = parser.parse_known_args()  # tolerate Jupyter's own arguments
QUICK = args.quick or os.environ.get("KAQ_TUTORIAL_QUICK") == "1"
os.makedirs(args.output_dir, exist_ok=True)
rng = np.random.default_rng(0)
keras.utils.set_random_seed(0)

# %% [markdown]
# ## The text
#
# Each line repeats a random word of 2 to 5 letters (`"kqekqekqe..."`). The
# next character is predictable once the line has shown its word: the
# model has to find the period, which takes looking back.

# %%
LETTERS = "abcdefghijklmnopqrstuvwxyz"
VOCAB = len(LETTERS) + 1  # token 0 is padding
MAX_LENGTH = 96 if QUICK else 160


def line(length):
    word = rng.integers(1, VOCAB, size=rng.integers(2, 6))
    return np.resize(word, length)


def text(tokens):
    return "".join(LETTERS[t - 1] if t else "." for t in tokens)


train = np.stack([line(MAX_LENGTH) for _ in range(1500 if QUICK else 3000)])
print("a training line:", text(train[0][:40]), "...")

# %% [markdown]
# ## The model
#
# Token and position embeddings, two pre-norm blocks of causal
# `QKVAttention` (4 query heads sharing 2 key/value heads) and a small MLP,
# and a softmax over the letters. The layers are kept in a list so the
# decoding loop below can call them one step at a time.

# %%
WIDTH, HEADS, KV_HEADS, HEAD_SIZE = 64, 4, 2, 16
token_embedding = keras.layers.Embedding(VOCAB, WIDTH, mask_zero=True)
position_embedding = keras.layers.Embedding(MAX_LENGTH, WIDTH)
blocks = [
    dict(
        norm=keras.layers.LayerNormalization(),
        attention=QKVAttention(HEADS, HEAD_SIZE, num_key_value_heads=KV_HEADS),
        mlp=keras.Sequential([keras.layers.Dense(2 * WIDTH, activation="gelu"),
                              keras.layers.Dense(WIDTH)]),
        mlp_norm=keras.layers.LayerNormalization(),
    )
    for _ in range(2)
]
head = keras.layers.Dense(VOCAB)


def block_step(block, x, mask, positions_mask, cache=None, index=None):
    """One block, on the whole prefix (no cache) or on new steps."""
    h = block["norm"](x)
    kwargs = dict(query_mask=mask, value_mask=mask, use_causal_mask=True)
    if cache is not None:
        kwargs.update(cache=cache, cache_update_index=index, attention_mask=positions_mask)
        h, cache = block["attention"](h, h, **kwargs)
    else:
        h = block["attention"](h, h, **kwargs)
    x = x + h
    return x + block["mlp"](block["mlp_norm"](x)), cache


def embed(tokens, start):
    steps = ops.arange(start, start + tokens.shape[1])
    return token_embedding(tokens) + position_embedding(steps)[None]


# The positions are a second input (0, 1, 2, ... for every row).
tokens_in = keras.Input((None,), dtype="int32")
positions_in = keras.Input((None,), dtype="int32")
not_padding = ops.not_equal(tokens_in, 0)
hidden = token_embedding(tokens_in) + position_embedding(positions_in)
for block in blocks:
    hidden, _ = block_step(block, hidden, not_padding, None)
model = keras.Model([tokens_in, positions_in], head(hidden))
model.compile(keras.optimizers.Adam(3e-3),
              keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              metrics=["accuracy"])

def positions(batch, length):
    return np.tile(np.arange(length, dtype="int32"), (batch, 1))


history = model.fit(
    [train[:, :-1], positions(len(train), MAX_LENGTH - 1)], train[:, 1:],
    batch_size=64, epochs=2 if QUICK else 4, validation_split=0.1, verbose=2,
)
accuracy = history.history["val_accuracy"][-1]
print(f"next-character accuracy (held out) {accuracy:.3f}")

# %% [markdown]
# ## Greedy decoding, twice
#
# A batch of 64 prompts of 3 to 12 characters, left-padded to 12. Without
# a cache, every step runs the model over the whole prefix and keeps the
# last position's prediction. With a cache, the prompt runs once (filling positions 0-11),
# then each step feeds one character at `cache_update_index = t`; the
# `attention_mask` over the cache hides the prompt's padding for every
# later step, as KerasHub models pass it.

# %%
BATCH, PROMPT = 64, 12
prompts = np.zeros((BATCH, MAX_LENGTH), "int32")
for row in range(BATCH):
    length = rng.integers(3, PROMPT + 1)
    prompts[row, PROMPT - length : PROMPT] = line(length)


def generate_without_cache(prompts):
    tokens = prompts.copy()
    seconds = []
    for t in range(PROMPT, MAX_LENGTH):
        start = time.perf_counter()
        logits = model([tokens[:, :t], positions(BATCH, t)])
        tokens[:, t] = np.argmax(ops.convert_to_numpy(logits[:, -1]), axis=-1)
        seconds.append(time.perf_counter() - start)
    return tokens, seconds


def generate_with_cache(prompts):
    tokens = prompts.copy()
    valid = np.ones((BATCH, MAX_LENGTH), bool)
    valid[:, :PROMPT] = prompts[:, :PROMPT] != 0
    caches = [ops.zeros((BATCH, 2, MAX_LENGTH, KV_HEADS, HEAD_SIZE)) for _ in blocks]
    seconds = []
    t, new = 0, tokens[:, :PROMPT]
    while t + new.shape[1] <= MAX_LENGTH - 1:
        start = time.perf_counter()
        x = embed(new, t)
        mask = new != 0
        positions_mask = np.repeat(valid[:, None, :], new.shape[1], axis=1)
        for i, block in enumerate(blocks):
            x, caches[i] = block_step(block, x, mask, positions_mask, caches[i], t)
        logits = head(x[:, -1])
        t += new.shape[1]
        tokens[:, t] = np.argmax(ops.convert_to_numpy(logits), axis=-1)
        new = tokens[:, t : t + 1]
        if t > PROMPT:  # the prompt's own call is not a per-token step
            seconds.append(time.perf_counter() - start)
        else:
            first = time.perf_counter() - start
    return tokens, [first] + seconds


plain, plain_seconds = generate_without_cache(prompts)
cached, cached_seconds = generate_with_cache(prompts)
same = bool(np.array_equal(plain, cached))
for row in range(3):
    print(f"prompt {text(prompts[row, :PROMPT]):>12} -> {text(cached[row, PROMPT:PROMPT + 40])}")
print(f"same text with and without the cache: {same}")

# %% [markdown]
# ## Cost per character as the text grows

# %%
lengths = np.arange(PROMPT + 1, MAX_LENGTH + 1)
window = 8
smooth = lambda s: np.convolve(s, np.ones(window) / window, mode="valid")
last = slice(-window * 2, None)
speedup = float(np.median(plain_seconds[last]) / np.median(cached_seconds[last]))


def spread(seconds):
    """Median and quartiles of the last steps' times, in ms."""
    low, mid, high = np.percentile(np.array(seconds[last]) * 1e3, [25, 50, 75])
    return f"{mid:.1f} ms (quartiles {low:.1f}-{high:.1f})"


print(f"time per character over the last {window * 2} steps (to length {MAX_LENGTH}): "
      f"without cache {spread(plain_seconds)}, with cache {spread(cached_seconds)} "
      f"(speedup {speedup:.1f}x)")

plt.rcParams.update({"font.size": 11, "axes.titlesize": 11, "legend.fontsize": 10,
                     "figure.facecolor": "white", "savefig.facecolor": "white"})
fig, ax = plt.subplots(figsize=(9, 5), layout="constrained")
for seconds, label, color in (
    (plain_seconds, "no cache: re-run the model over the whole prefix", "tab:blue"),
    (cached_seconds, "KV cache: one step for the new character", "tab:orange"),
):
    ax.plot(lengths, np.array(seconds) * 1e3, ".", color=color, alpha=0.3, ms=4)
    ax.plot(lengths[window - 1 :], smooth(seconds) * 1e3, color=color, lw=2, label=label)
ax.plot([], [], ".", color="gray", label="dots: each step; lines: mean of 8 steps")
ax.set_ylim(0, None)
ax.set_xlabel("length of the text so far (characters, prompt padded to 12)")
ax.set_ylabel("wall time per new character (ms)")
ax.set_title(f"Greedy decoding of {BATCH} prompts at once (eager, CPU): time per step\n"
             f"same text with and without the cache: {'yes' if same else 'NO'}; "
             f"last {window * 2} steps {speedup:.1f}x faster with the cache")
ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1, frameon=False)
path = os.path.join(args.output_dir, "09_decoding_with_a_kv_cache.png")
fig.savefig(path, dpi=120)
print("figure:", path)

# %% [markdown]
# ## What to take away
#
# - With `cache=` and `cache_update_index=`, `QKVAttention` decodes one
#   token at a time and gives the same text as re-running the model over
#   the prefix, padding included.
# - Each cached step projects one token and attends over the cache, so
#   its time stays flat while the re-run grows with the text.
# - `num_key_value_heads` shrinks the cache (here 2 heads instead of 4)
#   and, with the same weights, equals `keras.layers.GroupQueryAttention`.

# %%
print(f"RESULT same text {same}; speedup at length {MAX_LENGTH} {speedup:.1f}x; "
      f"held-out accuracy {accuracy:.3f}")
