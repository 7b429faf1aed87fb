# %% [markdown]
# # A KerasHub GPT-2 on sequences its attention cannot hold: `replace_attention`
#
# **Author:** keras_addons_qa contributors<br>
# **Date created:** 2026-12-06<br>
# **Last modified:** 2026-12-06<br>
# **Description:** A GPT-2-style model from KerasHub, built from a config,
# has its attention swapped for `QKVAttention` in place. Same outputs, same
# weight paths; then it trains and generates on sequences whose attention
# scores would not fit in this machine's memory (24 GiB), and a plot shows the peak
# memory of a training step against the length, before and after the swap.
#
# Attention builds a `(heads, T, T)` matrix of scores per example, and a
# training step keeps several of them: for 2 heads over 32768 steps one
# such matrix is 8 GiB, and a two-layer model's training step needs many
# times that. `QKVAttention` computes the same attention block
# by block once the scores would pass `scores_budget_mb` (128 MiB per
# example by default), so memory grows linearly with the length instead.
#
# KerasHub is where Keras users get their transformers.
# `keras_addons_qa.layers.replace_attention(model)` swaps every
# `MultiHeadAttention` a built model holds (KerasHub's
# `CachedMultiHeadAttention` in its `TransformerDecoder` blocks) for the
# `QKVAttention` with the same configuration and weights.
#
# This tutorial needs KerasHub (`make test-hub` or `make demo` installs
# it). Run it as a script (`python examples/12_long_context_gpt2.py
# [--quick] [--output-dir DIR]`) or open it as a notebook.

# %%
import argparse
import json
import os
import subprocess
import sys
import time

import keras
import keras_hub
import matplotlib.pyplot as plt
import numpy as np

from keras_addons_qa.layers import QKVAttention
from keras_addons_qa.layers import replace_attention

parser = argparse.ArgumentParser()
parser.add_argument("--quick", action="store_true", help="small run, < 60 s")
parser.add_argument("--output-dir", default=os.path.join("examples", "output"))
args, _ = parser.parse_known_args()  # tolerate Jupyter's own arguments
QUICK = args.quick or os.environ.get("KAQ_TUTORIAL_QUICK") == "1"
os.makedirs(args.output_dir, exist_ok=True)
rng = np.random.default_rng(0)
keras.utils.set_random_seed(0)

# %% [markdown]
# ## A GPT-2 from a config
#
# No download: a small GPT-2 backbone (2 blocks, 2 heads of 32) with random
# weights, and the causal-LM task on top of it, without a tokenizer (the
# inputs are token ids). `LONG` is the training length for the swapped
# model.

# %%
LONG = 1024 if QUICK else 32768
# MiB of scores per example past which QKVAttention goes block by block:
# the default (128) in full runs; small in quick runs, so that their short
# sequences take the blockwise path too.
BUDGET = 1.0 if QUICK else 128.0
# No dropout: `QKVAttention` drops attention weights only on its full-scores
# path, so a training step with attention dropout (GPT-2's default is 0.1)
# holds the full scores whatever the length.
CONFIG = dict(vocabulary_size=32, num_layers=2, num_heads=2, hidden_dim=64,
              intermediate_dim=128, max_sequence_length=LONG + 64, dropout=0.0)


def build(config):
    backbone = keras_hub.models.GPT2Backbone(**config)
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)


lm = build(CONFIG)
tokens = rng.integers(1, 32, size=(2, 64)).astype("int32")
batch = {"token_ids": tokens, "padding_mask": np.ones_like(tokens, bool)}
before = keras.ops.convert_to_numpy(lm.backbone(batch))
paths = [v.path for v in lm.weights]
print("attention before:", type(lm.backbone.transformer_layers[0]._self_attention_layer).__name__)

# %% [markdown]
# ## The swap
#
# In place: the blocks keep their other layers, the new attention layers
# keep the old ones' names, variable paths (`transformer_layer_0/
# self_attention/query/kernel`, so a `LayoutMap` for sharding still
# matches) and weights.

# %%
swapped = replace_attention(lm, scores_budget_mb=BUDGET)
after = keras.ops.convert_to_numpy(lm.backbone(batch))
difference = float(np.abs(after - before).max())
print("attention after: ", type(lm.backbone.transformer_layers[0]._self_attention_layer).__name__,
      f"({len(swapped)} layers swapped)")
print(f"same variable paths: {[v.path for v in lm.weights] == paths}; "
      f"max |output after - output before| = {difference:.1e}")

# %% [markdown]
# ## Peak memory of a training step against the length
#
# Each point is one training step in a fresh process (a process's peak
# resident memory only grows), after a first step that traces it. One
# length per process also matters for another reason: when `fit` or
# `train_on_batch` on TensorFlow sees a new length, Keras retraces with the
# length unknown, and `QKVAttention` then takes the full scores (its blocks
# are planned from static lengths); train at fixed lengths, or pad to a few.
# KerasHub's attention is measured up to the length where its scores still
# fit comfortably; the swapped model goes on to `LONG`.
#
# What still grows with the square of the length after the swap is not
# attention's scores: KerasHub's `TransformerDecoder` builds its causal and
# padding mask as a `(batch, T, T)` tensor, int32 once the padding is
# merged in (4 GiB at 32768 steps), and hands it to the attention layer.
# `QKVAttention` reads it block by block, but it exists, and it is why the
# last point rises faster than the others.

# %%
MEASURE = r"""
import json, resource, sys, time
import numpy as np, keras, keras_hub
from keras_addons_qa.layers import replace_attention
config, kind, length, budget = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
keras.utils.set_random_seed(0)
lm = keras_hub.models.GPT2CausalLM(keras_hub.models.GPT2Backbone(**config), preprocessor=None)
if kind == "qkv":
    lm.backbone({"token_ids": np.ones((1, 8), "int32"), "padding_mask": np.ones((1, 8), bool)})
    replace_attention(lm, scores_budget_mb=budget)
lm.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=False)
x = np.random.default_rng(length).integers(1, 32, size=(1, length + 1)).astype("int32")
inputs = {"token_ids": x[:, :-1], "padding_mask": np.ones((1, length), bool)}
lm.train_on_batch(inputs, x[:, 1:])  # traced
start = time.perf_counter()
lm.train_on_batch(inputs, x[:, 1:])
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
print(f"MEASURED {peak:.3f} {seconds:.3f}", flush=True)
"""
FULL_LENGTHS = [512] if QUICK else [1024, 2048, 4096, 8192]
QKV_LENGTHS = FULL_LENGTHS + ([1024] if QUICK else [16384, 32768])


def measure(kind, lengths):
    """{length: (peak GiB, step seconds)}, one process per length."""
    found = {}
    for length in lengths:
        done = subprocess.run(
            [sys.executable, "-c", MEASURE, json.dumps(CONFIG), kind, str(length), str(BUDGET)],
            capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
        rows = [line.split()[1:] for line in done.stdout.splitlines()
                if line.startswith("MEASURED")]
        if done.returncode or not rows:
            raise RuntimeError(done.stdout[-2000:] + done.stderr[-2000:])
        found[length] = tuple(float(v) for v in rows[0])
    return found


full = measure("full", FULL_LENGTHS)
ours = measure("qkv", QKV_LENGTHS)
print(f"{'steps':>6} | {'KerasHub attention':>22} | {'QKVAttention':>22}")
for length in QKV_LENGTHS:
    theirs = "" if length not in full else f"{full[length][0]:.2f} GiB, {full[length][1]:.2f} s"
    print(f"{length:>6} | {theirs:>22} | {ours[length][0]:.2f} GiB, {ours[length][1]:.2f} s")
longest = FULL_LENGTHS[-1]
scores_gib = CONFIG["num_heads"] * LONG**2 * 4 / 2**30
# KerasHub's attention at LONG steps: a quadratic in the length through the
# measured points (the scores grow with its square).
fit = np.polyfit(FULL_LENGTHS, [full[t][0] for t in FULL_LENGTHS], min(2, len(FULL_LENGTHS) - 1))
needed = float(np.polyval(fit, LONG))
print(f"peak at {longest} steps: QKVAttention {ours[longest][0]:.2f} GiB vs KerasHub's "
      f"{full[longest][0]:.2f} GiB; at {LONG} steps one layer's scores alone would be "
      f"{scores_gib:.2f} GiB, and KerasHub's step about {needed:.0f} GiB (a quadratic "
      f"through its points)")

# %% [markdown]
# ## Training at `LONG` steps
#
# The text is simple on purpose: each token is followed by a fixed
# successor 9 times in 10, by a random token otherwise. The point here is
# the length a training step fits in, not what two small blocks learn in a
# few steps; the loss falls from the `log(31)` of guessing towards the
# text's own entropy within them. Each step is one sequence of `LONG`
# tokens.

# %%
SUCCESSOR = rng.permutation(31) + 1  # token t is mostly followed by SUCCESSOR[t - 1]


def text_of(length):
    tokens = [int(rng.integers(1, 32))]
    for _ in range(length - 1):
        follow = rng.random() < 0.9
        tokens.append(int(SUCCESSOR[tokens[-1] - 1]) if follow else int(rng.integers(1, 32)))
    return np.array(tokens)


STEPS = 16 if QUICK else 12
lm.compile(optimizer=keras.optimizers.Adam(3e-3), jit_compile=False)
losses = []
start = time.perf_counter()
for step in range(STEPS):
    x = text_of(LONG + 1)[None].astype("int32")
    inputs = {"token_ids": x[:, :-1], "padding_mask": np.ones((1, LONG), bool)}
    losses.append(float(lm.train_on_batch(inputs, x[:, 1:], return_dict=True)["loss"]))
seconds = (time.perf_counter() - start) / STEPS
print(f"training at {LONG} steps: loss {losses[0]:.2f} -> {losses[-1]:.2f} "
      f"over {STEPS} steps ({seconds:.1f} s per step; guessing: {np.log(31):.2f})")

# %% [markdown]
# ## Generating after a long prompt
#
# KerasHub's `generate` first runs the whole prompt through the model into
# each layer's KV cache (which `QKVAttention` also does block by block),
# then adds one token per step. Greedy decoding after a prompt of `LONG`
# tokens should follow the successors the model learned.

# %%
NEW = 16
prompt = {"token_ids": np.pad(text_of(LONG), (0, NEW))[None].astype("int32"),
          "padding_mask": (np.arange(LONG + NEW) < LONG)[None]}
lm.compile(sampler="greedy", jit_compile=False)
start = time.perf_counter()
generated = keras.ops.convert_to_numpy(lm.generate(prompt, stop_token_ids=None)["token_ids"])
seconds = time.perf_counter() - start
continued = generated[0, LONG - 1:]
matches = int((SUCCESSOR[continued[:-1] - 1] == continued[1:]).sum())
print(f"generated {NEW} tokens after a {LONG}-token prompt in {seconds:.1f} s; "
      f"{matches} of {NEW} follow their token's successor")

# %% [markdown]
# ## The figure

# %%
plt.rcParams.update({"font.size": 11, "axes.titlesize": 11, "legend.fontsize": 10,
                     "figure.facecolor": "white", "savefig.facecolor": "white"})
fig, ax = plt.subplots(figsize=(9, 5), layout="constrained")
ax.plot(list(full), [v[0] for v in full.values()], "o-", color="tab:blue",
        label="KerasHub's attention (full scores)")
between = np.linspace(FULL_LENGTHS[-1], LONG, 50)
ax.plot(between, np.polyval(fit, between), "--", color="tab:blue", alpha=0.6)
ax.plot(list(ours), [v[0] for v in ours.values()], "o-", color="tab:orange",
        label=f"after replace_attention: QKVAttention (blockwise past {BUDGET:g} MiB of scores)")
ax.set_xscale("log", base=2)
ax.set_xticks(QKV_LENGTHS, [str(t) for t in QKV_LENGTHS])
ax.set_yscale("log")
ticks = [t for t in (0.5, 1, 2, 4, 8, 16, 32, 64) if t <= 2 * max(needed, ours[LONG][0])]
ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
ax.minorticks_off()
ax.set_xlabel("sequence length (steps), one sequence per training step")
ax.set_ylabel("peak resident memory of the process (GiB, log scale)")
ax.set_title(f"GPT-2 (2 blocks, 2 heads of 32), one training step on a CPU\n"
             f"{LONG} steps: {ours[LONG][0]:.1f} GiB with QKVAttention, about "
             f"{needed:.0f} GiB with KerasHub's (dashed: quadratic fit)")
ax.legend(loc="upper left", frameon=False)
path = os.path.join(args.output_dir, "12_long_context_gpt2.png")
fig.savefig(path, dpi=120)
print("figure:", path)

# %% [markdown]
# ## What to take away
#
# - `replace_attention(model)` turns a built KerasHub model's attention
#   into `QKVAttention` in place: same outputs, same weight paths, and
#   `generate` works on it as before.
# - Past the scores budget, attention runs block by block and never holds
#   the scores, so the model trains and generates at lengths the full
#   scores cannot hold. The `(T, T)` mask KerasHub's decoder builds is the
#   quadratic term left.
# - A `.keras` file of the swapped model loads with KerasHub's attention
#   and the same weights; call `replace_attention` again after loading.

# %%
print(f"RESULT same outputs {difference:.1e}; peak at {longest} steps "
      f"{ours[longest][0]:.2f} vs {full[longest][0]:.2f} GiB; trains at {LONG} steps, "
      f"loss {losses[0]:.2f} -> {losses[-1]:.2f}")
