"""QKVAttention on an accelerator (Keras on JAX): correctness of the fused path.

CI has no GPU; this script is how the fused `keras.ops.dot_product_attention`
path is checked where fused kernels exist. It compares, on right-padded
sequences (some fully padded):

- the fused path (no scores) with the explicit path (scores requested),
- both with `keras.layers.MultiHeadAttention` on queries that see a key,
- the fully-masked policy (output == output bias) and gradient finiteness,

in float32 and mixed_bfloat16, then times fwd+bwd against MultiHeadAttention.

    KERAS_BACKEND=jax python benchmarks/gpu_attention_check.py
"""

import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import keras_addons_qa as kaq  # noqa: E402


def check(policy, batch=4, length=256, dim=128, heads=4):
    # Compare semantics, not TF32: float32 matmuls at full precision here.
    jax.config.update("jax_default_matmul_precision", "highest")
    keras.config.set_dtype_policy(policy)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, length, dim)).astype("float32")
    lengths = np.array([length, length // 2, 1, 0][:batch])
    mask = np.arange(length)[None] < lengths[:, None]
    mha = keras.layers.MultiHeadAttention(heads, dim // heads, bias_initializer="random_normal")
    mha(x, x)
    ours = kaq.layers.QKVAttention.from_multi_head_attention(mha)
    fused = np.asarray(ours(x, x, query_mask=mask, value_mask=mask), "float32")
    explicit, scores = ours(x, x, query_mask=mask, value_mask=mask, return_attention_scores=True)
    explicit = np.asarray(explicit, "float32")
    reference = np.asarray(
        mha(x, x, value_mask=mask, attention_mask=mask[:, :, None] & mask[:, None, :]), "float32"
    )
    tol = 1e-5 if policy == "float32" else 3e-2
    # The output bias as the layer adds it: rounded to the compute dtype.
    bias = np.asarray(keras.ops.cast(ours.weights[-1], ours.compute_dtype), "float32")
    report = {
        "policy": policy,
        "fused_vs_explicit": float(np.abs(fused - explicit).max()),
        "fused_vs_mha_visible": float(np.abs(fused[mask] - reference[mask]).max()),
        "empty_rows_equal_bias": bool(
            np.all(fused[~mask] == bias) and np.all(explicit[~mask] == bias)
        ),
        "scores_on_padding": float(np.abs(np.asarray(scores, "float32")[~np.broadcast_to(mask[:, None, None, :], scores.shape)]).max()),
    }

    variables = [v.value for v in ours.trainable_variables]

    def loss(values, x):
        out, _ = ours.stateless_call(values, [], x, x, query_mask=mask, value_mask=mask)
        return keras.ops.sum(keras.ops.square(keras.ops.cast(out, "float32")))

    x_padded = np.where(mask[..., None], x, np.nan).astype("float32")
    grads = jax.grad(loss, argnums=(0, 1))(variables, x_padded)
    report["grads_finite_with_nan_padding"] = bool(
        all(np.isfinite(np.asarray(g, "float32")).all() for g in jax.tree_util.tree_leaves(grads))
    )
    ok = (
        report["fused_vs_explicit"] <= tol
        and report["fused_vs_mha_visible"] <= tol
        and report["empty_rows_equal_bias"]
        and report["scores_on_padding"] == 0.0
        and report["grads_finite_with_nan_padding"]
    )
    report["ok"] = ok
    keras.config.set_dtype_policy("float32")
    jax.config.update("jax_default_matmul_precision", None)
    return report


def time_fwd_bwd(layer, x, mask, repeats=20):
    values = [v.value for v in layer.trainable_variables]

    @jax.jit
    def step(values, x):
        def loss(values):
            out, _ = layer.stateless_call(values, [], x, x, query_mask=mask, value_mask=mask)
            return keras.ops.sum(keras.ops.cast(out, "float32"))

        return jax.grad(loss)(values)

    jax.block_until_ready(step(values, x))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(step(values, x))
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)



def timing(batch=8, length=2048, dim=512, heads=8):
    keras.config.set_dtype_policy("mixed_bfloat16")
    rng = np.random.default_rng(1)
    x = jax.numpy.asarray(rng.normal(size=(batch, length, dim)), "bfloat16")
    lengths = rng.integers(length // 2, length + 1, size=batch)
    mask = jax.numpy.asarray(np.arange(length)[None] < lengths[:, None])
    mha = keras.layers.MultiHeadAttention(heads, dim // heads)
    mha(x, x)
    ours = kaq.layers.QKVAttention.from_multi_head_attention(mha)
    values = [v.value for v in mha.trainable_variables]

    @jax.jit
    def mha_step(values, x):
        def loss(values):
            out, _ = mha.stateless_call(
                values, [], x, x, value_mask=mask,
                attention_mask=mask[:, :, None] & mask[:, None, :],
            )
            return keras.ops.sum(keras.ops.cast(out, "float32"))

        return jax.grad(loss)(values)

    jax.block_until_ready(mha_step(values, x))
    mha_times = []
    for _ in range(20):
        start = time.perf_counter()
        jax.block_until_ready(mha_step(values, x))
        mha_times.append(time.perf_counter() - start)
    ours_ms = time_fwd_bwd(ours, x, mask)
    keras.config.set_dtype_policy("float32")
    return {"mha_ms": float(np.median(mha_times) * 1e3), "ours_ms": ours_ms}


if __name__ == "__main__":
    print("devices:", jax.devices())
    results = [check("float32"), check("mixed_bfloat16")]
    for r in results:
        print(r)
    if "--no-timing" not in sys.argv:
        print("timing B8 T2048 D512 H8 mixed_bfloat16 fwd+bwd:", timing())
    sys.exit(0 if all(r["ok"] for r in results) else 1)
