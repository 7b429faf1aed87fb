"""Whether the code being traced will be compiled by XLA (internal).

The package's one module that reaches into TensorFlow, and only behind a
fallback: it imports nothing from TensorFlow unless Keras runs on it.

Some formulations are faster under XLA and slower without it. A weighted sum
over time written as an elementwise product and a reduction is one: XLA fuses
the gradient's elementwise terms into the passes that need them, while a
batched matrix product's gradient is an outer product that a matrix kernel
writes out in full. Without XLA it is the reverse: TensorFlow's executor
writes the elementwise product out, and the batched product writes nothing
the size of the input. Layers ask `compiling()` and pick; both formulations
give the same values, and the tests run both.

On JAX everything is compiled by XLA. On TensorFlow, `tf.function(
jit_compile=True)` traces inside an XLA context, and so does Keras's `fit`
with `jit_compile=True` (the default `"auto"` picks it on a GPU or TPU when
every layer supports XLA); the check reads TensorFlow's private
`control_flow_util`, and answers False if that ever moves, which costs speed
under XLA, never correctness. On torch it is False.

`serial_fori_loop` is `keras.ops.fori_loop`, and `serial_scan` a scan over
`range(count)` that stacks its outputs, each with one iteration in flight at
a time. TensorFlow's `while_loop` starts up to ten iterations at once when
their inputs are ready, which multiplies the memory of a loop over chunks
that depend only on the loop index (chunked attention: 10.0 GiB instead of
2.8 GiB at 16384 steps).
"""

import keras


def compiling():
    """True if the function being traced will be compiled by XLA."""
    backend = keras.backend.backend()
    if backend == "jax":
        return True
    if backend == "tensorflow":
        return _tensorflow_xla_context()
    return False


def serial_fori_loop(lower, upper, body_fun, init_val):
    """`keras.ops.fori_loop`, one iteration at a time on TensorFlow."""
    return fori_loop(lower, upper, body_fun, init_val, parallel_iterations=1)


def serial_scan(step, init, count, dtypes):
    """`(carry, ys)` of `carry, ys = step(carry, i)` for `i` in
    `range(count)`, each of the tuple `ys` stacked along a new first axis;
    one iteration at a time.

    On TensorFlow the outputs go into `TensorArray`s, written in place (a
    buffer updated with `slice_update` or a scatter inside a TensorFlow
    graph's loop is copied whole at each iteration); elsewhere this is
    `keras.ops.scan`. `count` is a Python int, `init` a tuple of tensors,
    `dtypes` the dtypes of `ys`.
    """
    if keras.backend.backend() != "tensorflow":
        return keras.ops.scan(step, init, keras.ops.arange(count, dtype="int32"))
    import tensorflow as tf

    def body(i, carry, arrays):
        carry, ys = step(carry, i)
        return i + 1, carry, tuple(a.write(i, y) for a, y in zip(arrays, ys))

    arrays = tuple(tf.TensorArray(dtype, size=count) for dtype in dtypes)
    _, carry, arrays = tf.while_loop(
        lambda i, *_: i < count,
        body,
        (tf.constant(0), init, arrays),
        parallel_iterations=1,
        maximum_iterations=count,
    )
    return carry, tuple(a.stack() for a in arrays)


def after(tensors, done):
    """`tensors` (a tuple), used only once `done` (a tensor) is computed.

    A TensorFlow graph runs independent ops at once: independent loops,
    each with large temporaries, would hold them all together. Elsewhere
    (JAX, torch) the tensors as they are.
    """
    if keras.backend.backend() != "tensorflow":
        return tensors
    import tensorflow as tf

    with tf.control_dependencies([done]):
        return tuple(tf.identity(t) for t in tensors)


def fori_loop(lower, upper, body_fun, init_val, parallel_iterations=10):
    """`keras.ops.fori_loop` that XLA can differentiate on TensorFlow.

    Keras's TensorFlow `fori_loop` is a `tf.while_loop` without a trip
    count; under `jit_compile=True` its gradient fails ("XLA compilation
    requires a fixed tensor list size"). Here the loop gets
    `maximum_iterations=upper - lower`, which XLA reads as a constant.
    """
    if keras.backend.backend() != "tensorflow":
        return keras.ops.fori_loop(lower, upper, body_fun, init_val)
    import tensorflow as tf

    return tf.while_loop(
        lambda i, _: i < upper,
        lambda i, value: (i + 1, body_fun(i, value)),
        (lower, init_val),
        parallel_iterations=parallel_iterations,
        maximum_iterations=upper - lower,
    )[1]


def _tensorflow_xla_context():
    try:  # pragma: no cover - depends on the installed TensorFlow
        from tensorflow.python.framework import ops as tf_ops
        from tensorflow.python.ops import control_flow_util
    except ImportError:  # pragma: no cover
        return False
    try:
        return bool(
            control_flow_util.GraphOrParentsInXlaContext(tf_ops.get_default_graph())
        )
    except Exception:  # pragma: no cover - a private API changed shape
        return False
