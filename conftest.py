"""Root pytest configuration: what `--doctest-modules` may import."""

import importlib.util

# The JAX fast path is imported only on the JAX backend; without JAX
# installed there is nothing to collect from it.
collect_ignore = []
if importlib.util.find_spec("jax") is None:
    collect_ignore.append("keras_addons_qa/_jax_attention.py")
