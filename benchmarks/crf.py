"""The CRF functions against the Python loop over time users copy.

`crf_log_likelihood` with its gradient (inputs and transitions) and
`crf_decode`, on batch 32, 128 steps, 9 tags (BIO over four entity types),
a quarter of each batch padded, against the same dynamic programs written as
a Python `for` loop over time inside `tf.function` (what Q&A answers give:
the loop unrolls into the graph, one copy per step). TensorFlow graph and
XLA (`jit_compile=True`), in one process. Reported: trace + compile + first
call, the median call, and the call's ratio ours / loop; the results must
agree (log-likelihoods within 1e-4, the same decoded paths).

    python -m benchmarks.crf [--tiny]
"""

import argparse
import sys
import time

from benchmarks import protocol


def loop_log_likelihood(inputs, tags, lengths, transitions):
    """The textbook forward algorithm, a Python loop over time."""
    import tensorflow as tf

    steps = inputs.shape[1]
    transitions = tf.convert_to_tensor(transitions)
    mask = tf.sequence_mask(lengths, steps, dtype=inputs.dtype)
    alpha = inputs[:, 0]
    score = tf.gather(inputs[:, 0], tags[:, 0], batch_dims=1)
    for t in range(1, steps):
        new = inputs[:, t] + tf.reduce_logsumexp(alpha[:, :, None] + transitions, axis=1)
        alpha = tf.where(mask[:, t : t + 1] > 0, new, alpha)
        step = tf.gather(inputs[:, t], tags[:, t], batch_dims=1)
        step += tf.gather_nd(transitions, tf.stack([tags[:, t - 1], tags[:, t]], -1))
        score += mask[:, t] * step
    return score - tf.reduce_logsumexp(alpha, axis=1)


def loop_decode(potentials, transitions, lengths):
    """The textbook Viterbi, Python loops over time."""
    import tensorflow as tf

    steps = potentials.shape[1]
    transitions = tf.convert_to_tensor(transitions)
    mask = tf.sequence_mask(lengths, steps)
    alpha = potentials[:, 0]
    pointers = []
    for t in range(1, steps):
        candidates = alpha[:, :, None] + transitions
        came = tf.argmax(candidates, axis=1, output_type=tf.int32)
        identity = tf.broadcast_to(tf.range(transitions.shape[0]), tf.shape(came))
        pointers.append(tf.where(mask[:, t : t + 1], came, identity))
        alpha = tf.where(mask[:, t : t + 1], potentials[:, t] + tf.reduce_max(candidates, axis=1), alpha)
    tag = tf.argmax(alpha, axis=1, output_type=tf.int32)
    path = [tag]
    for came in reversed(pointers):
        tag = tf.gather(came, tag, batch_dims=1)
        path.append(tag)
    return tf.where(mask, tf.stack(path[::-1], axis=1), 0)


def _worker(sizes, repeats):
    import numpy as np
    import tensorflow as tf

    from keras_addons_qa import text

    batch, steps, tags_count = sizes
    rng = np.random.default_rng(0)
    inputs = tf.constant(rng.normal(size=(batch, steps, tags_count)).astype("float32"))
    transitions = tf.Variable(rng.normal(size=(tags_count, tags_count)).astype("float32"))
    tags = tf.constant(rng.integers(0, tags_count, size=(batch, steps)).astype("int32"))
    lengths = rng.integers(1, steps + 1, size=batch).astype("int32")
    lengths[: batch // 4 * 3] = steps  # a quarter padded
    lengths = tf.constant(lengths)

    def trainer(log_likelihood):
        def step(inputs, tags, lengths):
            with tf.GradientTape() as tape:
                tape.watch(inputs)
                loss = -tf.reduce_mean(log_likelihood(inputs, tags, lengths, transitions))
            return (loss, *tape.gradient(loss, [inputs, transitions]))

        return step

    def ours_log_likelihood(*args):
        return text.crf_log_likelihood(*args)[0]

    def ours_decode(*args):
        return text.crf_decode(*args)[0]

    cases = {
        "log-likelihood + gradient": (trainer(ours_log_likelihood), trainer(loop_log_likelihood),
                                      (inputs, tags, lengths)),
        "decode": (ours_decode, loop_decode, (inputs, transitions, lengths)),
    }
    results = []
    for mode, jit in (("graph", False), ("XLA", True)):
        for case, (ours, loop, args) in cases.items():
            row = dict(case=case, mode=mode)
            outputs, compiled = {}, {}
            for name, fn in (("ours", ours), ("loop", loop)):
                compiled[name] = tf.function(fn, jit_compile=jit)
                start = time.perf_counter()
                outputs[name] = [np.asarray(o) for o in tf.nest.flatten(compiled[name](*args))]
                row[name + "_compile"] = time.perf_counter() - start
                row[name] = []
            for _ in range(repeats):  # interleaved
                for name, fn in compiled.items():
                    start = time.perf_counter()
                    [np.asarray(o) for o in tf.nest.flatten(fn(*args))]
                    row[name].append(time.perf_counter() - start)
            ratios = [a / b for a, b in zip(row["ours"], row["loop"])]
            row.update(ours=float(np.median(row["ours"])), loop=float(np.median(row["loop"])),
                       ratio=float(np.median(ratios)))
            row["exact"] = all(
                np.allclose(a, b, rtol=1e-4, atol=1e-4) for a, b in zip(outputs["ours"], outputs["loop"])
            )
            results.append(row)
    protocol.report(results)


def run(tiny=False, repeats=15):
    """The markdown table (TensorFlow, in a process of its own)."""
    sizes = (4, 6, 3) if tiny else (32, 128, 9)
    results = protocol.run_worker(
        "crf", "--repeats", repeats, *(["--tiny"] if tiny else []),
        env={"KERAS_BACKEND": "tensorflow"}, what="CRF benchmark",
    )[-1]
    batch, steps, tags_count = sizes
    rows = [
        f"CRF functions, batch {batch}, {steps} steps, {tags_count} tags, TensorFlow, against a "
        "Python loop over time in `tf.function` (ratio: ours / loop, call time):",
        "",
        "| case | mode | ours: trace + compile + first (s) | loop: trace + compile + first (s) "
        "| ours (ms) | loop (ms) | ratio | same results |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | :---: |",
    ]
    for r in results:
        rows.append(
            f"| {r['case']} | {r['mode']} | {r['ours_compile']:.2f} | {r['loop_compile']:.2f} | "
            f"{r['ours'] * 1e3:.2f} | {r['loop'] * 1e3:.2f} | {r['ratio']:.2f} | "
            f"{'yes' if r['exact'] else 'NO'} |"
        )
    return "\n".join(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return _worker((4, 6, 3) if args.tiny else (32, 128, 9), args.repeats) or 0
    print(run(args.tiny, args.repeats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
