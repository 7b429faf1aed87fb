"""Matrix products with a weight, as one 2-D product (internal)."""

import math

from keras import ops


def flat_matmul(inputs, kernel, contracted=1):
    """Contracts the last `contracted` axes of `inputs` with the leading
    axes of `kernel`, as one 2-D matrix product.

    `ops.matmul((B, T, C), (C, U))` broadcasts the kernel over the batch:
    TensorFlow then computes the kernel's gradient as B products, one per
    example, and a sum over them, and Keras's `EinsumDense` and `Dense` do
    the same. Flattening the leading axes first makes that gradient one
    `(C, B*T) @ (B*T, U)` product. The values are the same.

    Args:
        inputs: `(..., c_1, ..., c_k)` tensor, `k = contracted`.
        kernel: `(c_1, ..., c_k, u_1, ...)` tensor.
        contracted: How many trailing axes of `inputs` are contracted.

    Returns:
        `(..., u_1, ...)` tensor.
    """
    lead = ops.shape(inputs)[: len(inputs.shape) - contracted]
    size = math.prod(kernel.shape[:contracted])
    flat = ops.reshape(inputs, (-1, size))
    out = ops.matmul(flat, ops.reshape(kernel, (size, -1)))
    return ops.reshape(out, tuple(lead) + tuple(kernel.shape[contracted:]))
