"""Benchmarks: each component timed against the alternative users would write.

`python -m benchmarks` (or `make bench`) runs the CPU ratio suite in
`benchmarks/cpu.py`; `benchmarks/gpu.py` is the JAX/GPU counterpart, run on
a machine with an accelerator.
"""
