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

`after` orders independent computations and `read` turns a variable into
a tensor, both no-ops off TensorFlow.

`scan` is a scan over time-major sequences whose reads and writes cost
O(1) per step in every mode (the CRF's dynamic programs).
`serial_fori_loop` is `keras.ops.fori_loop`, and `serial_scan` a scan over
`range(count)` that stacks its outputs, each with one iteration in flight at
a time. TensorFlow's `while_loop` starts up to ten iterations at once when
their inputs are ready, which multiplies the memory of a loop over chunks
that depend only on the loop index (blockwise attention would hold several
blocks' scores at once).
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
    # The counter starts once `init` is computed: a lowered loop's body runs
    # as soon as its counter is ready, so a counter independent of `init`
    # would let the loop start before what `init` was made to wait for
    # (`after`).
    with tf.control_dependencies(tf.nest.flatten(init)):
        start = tf.constant(0, name="serial_scan_start")
    _, carry, arrays = tf.while_loop(
        lambda i, *_: i < count,
        body,
        (start, init, arrays),
        parallel_iterations=1,
        maximum_iterations=count,
    )
    # One output stacked at a time: each holds its array and the copy.
    stacked = []
    for a in arrays:
        with tf.control_dependencies(stacked[-1:]):
            stacked.append(a.stack())
    return carry, tuple(stacked)


def scan(step, init, xs, outputs, reverse=False):
    """`(carry, ys)` of `carry, ys = step(carry, x)` over the slices `x`
    of the tuple `xs` along their first axis (reversed with `reverse`),
    each of the tuple `ys` stacked along a new first axis in `xs`' order.

    Each step reads its slices and writes its outputs in O(1), also in a
    TensorFlow graph and in the gradient: there, indexing a tensor with the
    loop counter (`x[t]`), or updating a buffer, costs the whole tensor at
    each step (its gradient is a dense tensor of the full shape; the
    buffer is copied), which makes a loop over T steps O(T^2). On
    TensorFlow the slices and the outputs live in `TensorArray`s; on torch
    (and in TensorFlow's eager mode) the loop runs in Python over `unbind`'s views (whose gradient is one
    `stack`, where `x[t]`'s is a full-size tensor per step); on JAX this is
    `jax.lax.scan`. `outputs` gives each of `ys` as a `(dtype, like)`
    pair, `like` a tensor of its shape. There is at least one step when
    `outputs` is not empty; on TensorFlow their number may be dynamic.
    """
    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        return _python_scan(step, init, xs, outputs, reverse, torch.unbind, torch.stack)
    if backend != "tensorflow":
        return keras.ops.scan(step, init, xs, reverse=reverse)
    import tensorflow as tf

    if tf.executing_eagerly():
        return _python_scan(step, init, xs, outputs, reverse, tf.unstack, tf.stack)
    count = tf.shape(xs[0])[0]
    # Reversed with a gather, not `reverse`: tf2onnx's rewriters misread a
    # `ReverseV2` next to a loop; the loop reads and writes at its counter.
    def flip(x):
        return tf.gather(x, tf.range(count - 1, -1, -1))

    inputs = tuple(
        tf.TensorArray(x.dtype, size=count, element_shape=x.shape[1:]).unstack(
            flip(x) if reverse else x
        )
        for x in xs
    )

    def body(i, carry, arrays):
        carry, ys = step(carry, tuple(a.read(i) for a in inputs))
        return i + 1, carry, tuple(a.write(i, y) for a, y in zip(arrays, ys))

    # Outside XLA (which has no resize) the outputs' arrays are made from
    # an empty tensor and resized, not reserved: LiteRT's converter lowers a
    # reserved list only for a static element shape (the batch size is
    # dynamic), and tf2onnx takes a loop's outputs from reserved or resized
    # lists only.
    def array(dtype, like):
        if _tensorflow_xla_context():
            return tf.TensorArray(dtype, size=count, element_shape=like.shape)
        empty = tf.TensorArray(dtype, size=0, dynamic_size=True, element_shape=like.shape)
        empty = empty.unstack(tf.zeros(tf.concat([[0], tf.shape(like)], 0), dtype))
        flow = tf.raw_ops.TensorListResize(input_handle=empty.flow, size=count)
        return tf.TensorArray(dtype, flow=flow)

    arrays = tuple(array(dtype, like) for dtype, like in outputs)
    _, carry, arrays = tf.while_loop(
        lambda i, *_: i < count,
        body,
        (tf.constant(0), init, arrays),
        maximum_iterations=count,
    )
    ys = tuple(a.stack() for a in arrays)
    for y, (_, like) in zip(ys, outputs):
        y.set_shape(tf.TensorShape([None]).concatenate(like.shape))
    return carry, tuple(flip(y) for y in ys) if reverse else ys


def _python_scan(step, init, xs, outputs, reverse, unstack, stack):
    slices = list(zip(*(unstack(x) for x in xs)))
    if not slices:  # no step: empty outputs of the given shapes
        return init, tuple(keras.ops.zeros((0,) + tuple(like.shape), dtype) for dtype, like in outputs)
    carry, ys = init, []
    for x in reversed(slices) if reverse else slices:
        carry, y = step(carry, x)
        ys.append(y)
    if reverse:
        ys.reverse()
    return carry, tuple(stack(y) for y in zip(*ys))


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


def read(x):
    """`x` as a tensor: a TensorFlow variable is read (a custom gradient
    that reads a variable itself must take the variables as an argument).
    Elsewhere `x` as it is."""
    if keras.backend.backend() != "tensorflow":
        return x
    import tensorflow as tf

    return tf.convert_to_tensor(x)


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


def eager_value(x):
    """`x` as a NumPy array when TensorFlow runs eagerly, else None."""
    import tensorflow as tf

    return x.numpy() if tf.executing_eagerly() and hasattr(x, "numpy") else None


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
