"""The KV cache of `QKVAttention` (KerasHub's `CachedMultiHeadAttention`
convention): `(batch, 2, max_length, key heads, key_dim)`, keys then
values; new steps are written at `cache_update_index`."""

import numbers

import keras
import numpy as np
from keras import ops

from keras_addons_qa import _checks


def check(query, cache, cache_update_index, kv_heads, key_dim, value_dim):
    """Raises unless `cache` and `cache_update_index` suit a layer of
    `kv_heads` key heads of `key_dim` (and `value_dim`) and the query."""
    if cache is None:
        raise ValueError(
            "`cache_update_index` needs a `cache`. Received: cache=None, "
            f"cache_update_index={cache_update_index!r}"
        )
    expected = (None, 2, None, kv_heads, key_dim)
    shape = _checks.static_shape(cache.shape)
    if len(shape) != 5 or any(s not in (None, e) for s, e in zip(shape, expected) if e):
        raise ValueError(
            "`cache` must have shape (batch, 2, max_length, "
            f"num_key_value_heads={kv_heads}, "
            f"key_dim={key_dim}). Received: cache.shape={shape}"
        )
    if shape[2] == 0:
        raise ValueError(
            f"`cache` must have room for a step (max_length >= 1). Received: cache.shape={shape}"
        )
    batch = _checks.static_shape(query.shape)[0]
    if None not in (batch, shape[0]) and batch != shape[0]:
        raise ValueError(
            "`cache` must have the query's batch size (no broadcast). Received: "
            f"cache.shape={shape}, query.shape={tuple(query.shape)}"
        )
    dtype = keras.backend.standardize_dtype(cache.dtype)
    if "float" not in dtype:
        raise ValueError(
            "`cache` must hold floats (keys and values would be truncated). "
            f"Received: cache.dtype={dtype}"
        )
    if cache_update_index is not None:
        check_index(cache_update_index, query, shape[2])
    if len(query.shape) != 3 or value_dim != key_dim:
        raise ValueError(
            "A cache needs rank-3 inputs and `value_dim == key_dim` (keys "
            f"and values share it). Received: query.shape={tuple(query.shape)}, "
            f"key_dim={key_dim}, value_dim={value_dim}"
        )


def check_index(index, query, max_length):
    """Raises unless `index` is a scalar int and, where its value is
    known (eager code), the query's steps fit in the cache from it."""
    if isinstance(index, (bool, np.bool_)) or isinstance(index, float):
        raise ValueError(
            "`cache_update_index` must be a scalar int. "
            f"Received: cache_update_index={index!r}"
        )
    if not isinstance(index, numbers.Integral):
        if not hasattr(index, "dtype") or not hasattr(index, "shape"):  # a list, a string
            raise ValueError(
                "`cache_update_index` must be a scalar int. "
                f"Received: cache_update_index={index!r}"
            )
        dtype = keras.backend.standardize_dtype(index.dtype)
        if "int" not in dtype or len(index.shape) != 0:
            raise ValueError(
                "`cache_update_index` must be a scalar int. Received: "
                f"cache_update_index with dtype {dtype} and shape {tuple(index.shape)}"
            )
        index = _checks.known_value(index)
    steps = _checks.static_shape(query.shape)[1]
    if index is None or None in (steps, max_length):
        return
    if not 0 <= int(index) <= max_length - steps:
        raise ValueError(
            f"`cache_update_index` must leave room for the query's {steps} step(s) "
            f"in the cache of max_length={max_length}: 0 <= cache_update_index <= "
            f"{max_length - steps}. Received: cache_update_index={int(index)}"
        )


def write_steps(buffer, steps, index):
    """`buffer[:, index:index + T] = steps` for `(B, T, ...)` steps, as a
    select: a step whose slot falls outside the buffer is not written, where
    `slice_update` would move the whole block back inside (compiled code
    cannot raise on an index out of range; eager code has raised already)."""
    length, count = buffer.shape[1], _checks.static_shape(steps.shape)[1]
    if count == 0:
        return buffer
    if count is None:
        count = ops.shape(steps)[1]
    relative = ops.arange(length, dtype="int32") - index
    inside = ops.logical_and(relative >= 0, relative < count)
    picked = ops.take(steps, ops.minimum(ops.maximum(relative, 0), count - 1), axis=1)
    inside = ops.reshape(inside, (1, length) + (1,) * (len(buffer.shape) - 2))
    return ops.where(inside, picked, buffer)


def update(cache, k, v, key_valid, index):
    """`(keys, values, cache, key_valid, offset)` for attention over the
    whole cache: the new steps' `k` and `v` written at `index`, the cache
    rebuilt from them, their padding `key_valid` (or None) placed on the
    cache's steps, and the first query's position. With `index` None the
    cache is read as it is (every step valid, queries from position 0)."""
    if index is None:
        return cache[:, 0], cache[:, 1], cache, None, 0
    index = ops.cast(index, "int32")
    k = write_steps(cache[:, 0], ops.cast(k, cache.dtype), index)
    v = write_steps(cache[:, 1], ops.cast(v, cache.dtype), index)
    if key_valid is not None:
        everywhere = ops.ones(ops.shape(cache)[:1] + (cache.shape[2],), "bool")
        key_valid = write_steps(everywhere, ops.cast(key_valid, "bool"), index)
    return k, v, ops.stack((k, v), axis=1), key_valid, index
