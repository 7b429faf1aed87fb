"""One process of the multi-process training tests (`test_multi_process.py`).

    python -m tests.multi_process_worker MODE INDEX COUNT PORT... OUT

MODE is `single` (one process trains on the global batches), `tf` (one
worker of a `MultiWorkerMirroredStrategy`; PORT is each worker's port),
`jax` (one process of a `jax.distributed` job under
`keras.distribution.DataParallel`; PORT is the coordinator's) or
`model_parallel` (one process, four host devices, `ModelParallel`). Each
writes the model's weights after training (and, for `model_parallel`, the
outputs before it) to OUT as `.npz`. Everything talks over 127.0.0.1.

The model uses every component that trains the same on one device and on
several: GaussianSampling is left out, as its training-mode draws come from
per-device random streams by design; WeightNormalization runs without its
data-dependent initialization, which reads each replica's own batch.
"""

import json
import os
import sys

VOCAB, DIM, STEPS, TAGS, SIZE = 12, 8, 6, 3, 3
GLOBAL_BATCH, BATCHES = 8, 3


def build_model():
    import keras
    import numpy as np

    import keras_addons_qa as kaq

    layers = kaq.layers
    keras.utils.set_random_seed(0)
    pretrained = np.random.default_rng(3).normal(size=(VOCAB, DIM)).astype("float32")
    tokens = keras.Input((STEPS,), dtype="int32", name="tokens")
    images = keras.Input((6, 6, 2), name="images")
    x = layers.PretrainedEmbedding(pretrained, trainable_tokens=5, trainable_dim=2, mask_zero=True)(tokens)
    x = layers.QKVAttention(4, 4, num_key_value_heads=2, distance_penalty=0.5, name="attention")(x, x)
    x = layers.ActivityPenalty(l1=1e-2, l2=1e-2)(x)
    tagged = layers.CRF(TAGS, name="crf")(x)
    pooled = layers.MaskedAttentionPooling(5)(x)
    seen = layers.DecomposedConv2D(3, 3, padding="same")(images)
    seen = keras.layers.GlobalAveragePooling2D()(seen)
    hidden = keras.layers.Concatenate()([pooled, seen])
    hidden = layers.WeightNormalization(
        keras.layers.Dense(16, activation="tanh", kernel_constraint=kaq.constraints.NonNegative()),
        data_init=False,
    )(hidden)
    groups = layers.MonotoneGroupedSoftmax(2, SIZE, name="groups")(hidden)
    word = keras.layers.Dense(VOCAB, activation="softmax", name="word")(hidden)
    noisy = layers.NoiseAdaptation(SIZE, trace_penalty=0.1, name="noise")(
        keras.layers.Dense(SIZE, activation="softmax")(hidden)
    )
    model = keras.Model(
        {"tokens": tokens, "images": images},
        {"groups": groups, "word": word, "noise": noisy, "potentials": tagged["potentials"]},
    )
    embedding = np.random.default_rng(0).normal(size=(VOCAB, 3)).astype("float32")
    model.compile(
        optimizer=keras.optimizers.SGD(0.2),
        loss={
            "groups": "sparse_categorical_crossentropy",
            "word": kaq.losses.AlmostOneHotEmbeddingLoss(embedding, power=2.0),
            "noise": "sparse_categorical_crossentropy",
            "potentials": kaq.losses.CRFLoss(),
        },
    )
    return model


def global_batches():
    """`BATCHES` global batches of `GLOBAL_BATCH` examples: (x, y) dicts."""
    import numpy as np

    rng = np.random.default_rng(1)
    out = []
    for _ in range(BATCHES):
        tokens = rng.integers(1, VOCAB, size=(GLOBAL_BATCH, STEPS)).astype("int32")
        tokens[::2, 4:] = 0  # padding
        x = {"tokens": tokens, "images": rng.normal(size=(GLOBAL_BATCH, 6, 6, 2)).astype("float32")}
        y = {
            "groups": rng.integers(0, SIZE, size=(GLOBAL_BATCH, 2)).astype("int32"),
            "word": rng.normal(size=(GLOBAL_BATCH, 3)).astype("float32"),
            "noise": rng.integers(0, SIZE, size=(GLOBAL_BATCH,)).astype("int32"),
            "potentials": rng.integers(0, TAGS, size=(GLOBAL_BATCH, STEPS)).astype("int32"),
        }
        out.append((x, y))
    return out


def local(batch, index, count):
    """This process's share of a global batch: consecutive rows."""
    size = GLOBAL_BATCH // count
    return {k: v[index * size : (index + 1) * size] for k, v in batch.items()}


def _weights(model):
    import keras

    return [keras.ops.convert_to_numpy(w) for w in model.weights]


def _save(path, arrays):
    import numpy as np

    np.savez(path, *arrays)


def single(out):
    model = build_model()
    _save(out.replace(".npz", "_initial.npz"), _weights(model))
    for x, y in global_batches():
        model.train_on_batch(x, y)
    _save(out, _weights(model))


def tf_worker(index, ports, out):
    os.environ["TF_CONFIG"] = json.dumps({
        "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
        "task": {"type": "worker", "index": index},
    })
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model = build_model()
        model.optimizer.build(model.trainable_variables)

    # `fit` fails under MultiWorkerMirroredStrategy in Keras 3 (see
    # docs/backends.md); the model's own `train_step`, run by the
    # strategy, is the working loop.
    @tf.function
    def step(x, y):
        return strategy.run(model.train_step, args=((x, y),))

    for x, y in global_batches():
        step(local(x, index, len(ports)), local(y, index, len(ports)))
    _save(out, _weights(model))


def jax_worker(index, count, port, out):
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}", num_processes=count, process_id=index
    )
    import keras

    # Each process feeds its own half (the constructor argument: Keras
    # 3.10 has no setter for it).
    distribution = keras.distribution.DataParallel(
        devices=jax.devices(), auto_shard_dataset=False
    )
    keras.distribution.set_distribution(distribution)
    model = build_model()
    for x, y in global_batches():
        model.fit(local(x, index, count), local(y, index, count), batch_size=GLOBAL_BATCH // count,
                  epochs=1, shuffle=False, verbose=0)
    _save(out, _weights(model))
    jax.distributed.shutdown()


def model_parallel(out):
    import jax
    import keras
    import numpy as np

    x, y = global_batches()[0]
    plain = build_model()
    before = [keras.ops.convert_to_numpy(v) for v in plain.predict(x, verbose=0).values()]
    plain.train_on_batch(x, y)
    mesh = keras.distribution.DeviceMesh((2, 2), ["batch", "model"], jax.devices())
    layout = keras.distribution.LayoutMap(mesh)
    # QKVAttention's projections, heads split over the "model" axis.
    layout["attention/(query|key|value)/kernel"] = (None, "model", None)
    layout["attention/attention_output/kernel"] = ("model", None, None)
    keras.distribution.set_distribution(
        keras.distribution.ModelParallel(layout_map=layout, batch_dim_name="batch")
    )
    sharded = build_model()
    kernel = next(v for v in sharded.weights if v.path == "attention/query/kernel")
    # Heads per shard of the query kernel, (features, heads, key_dim).
    shards = kernel.value.shape[1] // kernel.value.addressable_shards[0].data.shape[1]
    after = [keras.ops.convert_to_numpy(v) for v in sharded.predict(x, verbose=0).values()]
    sharded.train_on_batch(x, y)
    np.savez(out, shards=shards, outputs_plain=np.concatenate([a.ravel() for a in before]),
             outputs_sharded=np.concatenate([a.ravel() for a in after]),
             **{f"plain_{i}": w for i, w in enumerate(_weights(plain))},
             **{f"sharded_{i}": w for i, w in enumerate(_weights(sharded))})


def main(argv):
    mode, out = argv[0], argv[-1]
    if mode == "single":
        return single(out)
    if mode == "model_parallel":
        return model_parallel(out)
    index, count, ports = int(argv[1]), int(argv[2]), argv[3:-1]
    if mode == "tf":
        return tf_worker(index, ports, out)
    return jax_worker(index, count, ports[0], out)


if __name__ == "__main__":
    main(sys.argv[1:])
