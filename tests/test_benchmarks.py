"""The benchmark suite runs end to end (tiny sizes; speed is not asserted).

Marked `bench`: each case starts fresh processes, so the suite takes
minutes. `make test` leaves it out; `make test-bench` (in `.ci/run`) runs
it.
"""

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

from tests import harness

ROOT = pathlib.Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.bench


@pytest.mark.skipif(
    harness.BACKEND != "tensorflow",
    reason="the CPU ratio suite measures the TensorFlow backend (graph and XLA)",
)
def test_cpu_suite_runs_at_tiny_sizes(tmp_path):
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "MPLBACKEND": "Agg"}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--tiny", "--output-dir", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    text = (tmp_path / "cpu.md").read_text()
    table = text.split("\n\n")[1]  # the ratio table; the whole models follow
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    # 4 layers x (2 sizes x 2 gradient scenarios x 2 modes) + 3 loss cases x
    # (2 sizes x 2 modes): a loss's input always needs its gradient.
    assert len(rows) == 1 + 4 * 8 + 3 * 4
    combos = set()
    for row in rows[1:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        combos.add(tuple(cells[2:5]))
        ours_ms, theirs_ms, ratio = (float(c) for c in cells[5:8])
        assert ours_ms > 0 and theirs_ms > 0 and ratio > 0
    assert len(combos) == 8  # size x gradients x mode
    jax = importlib.util.find_spec("jax") is not None
    torch = importlib.util.find_spec("torch") is not None
    others = text.split("on JAX (`jax.jit`) and torch")[1].split("Whole models")[0]
    others, *floor = others.split("The penalty's floor on torch")
    assert len(floor) == torch
    for part in floor:  # a row per batch: Dense alone (ms), then 3 sides' ratios
        rows = [l for l in part.splitlines() if l.startswith("| ")]
        assert len(rows) == 2 + 1
        assert all(float(c) > 0 for c in rows[2].strip("| ").split("|"))
    others = [l for l in others.splitlines() if l.startswith("| ")]
    if jax or torch:
        # 4 layers x 2 sizes x 2 gradient scenarios + 3 losses x 2 sizes
        assert len(others) == 2 + 4 * 4 + 3 * 2
        for row in others[2:]:
            cells = [c.strip() for c in row.strip("|").split("|")]
            ratios = [float(cells[4 + 2 * i]) for i in range(jax + torch)]
            assert all(r > 0 for r in ratios) and cells[-2] in ("yes", "NO")
    whole = text.split("Whole models")[1].split("Monotone decoding")[0]
    whole = [l for l in whole.splitlines() if l.startswith("| ") and "---" not in l]
    assert len(whole) == 1 + 4  # header + (HAN, Transformer) x (graph, XLA)
    for row in whole[1:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[3]) > 0 and float(cells[4]) > 0 and float(cells[5]) > 0
    assert (tmp_path / "cpu_scaling.png").stat().st_size > 10_000
    decode, long = text.split("Monotone decoding")[1].split("Long sequences")
    decode, kernel = decode.split("`ops.attention`, training step")
    decode, crf = decode.split("CRF functions")
    decode = [l for l in decode.splitlines() if l.startswith("| ")]
    assert len(decode) == 2 + 2 + jax
    assert all(row.rstrip().endswith("| yes |") for row in decode[2:])  # exact paths
    crf, crf_scaling = crf.split("CRF against the length")
    crf = [l for l in crf.splitlines() if l.startswith("| ")]
    assert len(crf) == 2 + 4  # (log-likelihood + gradient, decode) x (graph, XLA)
    assert all(row.rstrip().endswith("| yes |") for row in crf[2:])  # same results as the loop
    scaling, *peers = crf_scaling.split("torch, ours / theirs")
    scaling = [l for l in scaling.splitlines() if l.startswith("| ")]
    # 3 paths x (TF graph, TF XLA, JAX, torch); 3 lengths at tiny sizes
    assert len(scaling) == 2 + 3 * (2 + jax + torch)
    for row in scaling[2:]:
        assert all(float(c) > 0 for c in row.strip("| ").split("|")[2:])
    assert len(peers) == (torch and importlib.util.find_spec("torchcrf") is not None)
    for part in peers:
        rows = [l for l in part.splitlines() if l.startswith("| ")]
        assert len(rows) == 2 + 3 and all(float(c) > 0 for r in rows[2:] for c in r.strip("| ").split("|"))
    kernel_cases, goals = kernel.split("| target |")
    kernel_cases = [l for l in kernel_cases.splitlines() if l.startswith("| ")]
    # blockwise and full at 3 lengths, JAX at 2 (and its full path at 1),
    # causal and blockwise at the long length, the window at 2, torch at 2;
    # the layers (QKVAttention, MultiHeadAttention) on TF at 1 length and on
    # torch at 3; QKVAttention at the long length on TF and JAX; blockwise
    # with oneDNN on at the long length (and at torch's other length)
    assert len(kernel_cases) == (
        2 + 6 + 3 * jax + 2 + 2 + 2 * torch + 2 + 6 * torch + 1 + jax + 1 + torch
    )
    for row in kernel_cases[2:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert all(float(c.split()[0]) > 0 for c in cells[1:3])  # s, GiB
        if row.startswith("| layer"):  # no attention FLOPs counted for a layer
            assert cells[3:] == ["", ""]
        else:
            assert all(float(c.split()[0]) > 0 for c in cells[3:])  # GFLOP/s, share
    goals = [l for l in goals.splitlines() if l.startswith("| ")]
    # ... and QKVAttention / MultiHeadAttention: TF time, torch time and
    # memory at 3 lengths; peak memory of the longest window and of
    # QKVAttention at the long length (TF, JAX); the share of the matmul
    # rate, and the rows against torch again, with oneDNN on
    assert len(goals) == (
        1 + 3 + 2 * jax + 3 + 2 * torch + 1 + 6 * torch + 1 + 1 + jax + 2 + 2 * torch
    )
    assert all(row.rstrip().endswith(("| yes |", "| no |")) for row in goals[1:])
    long = [l for l in long.splitlines() if l.startswith("| ")]
    # 2 lengths: ours (per backend), causal, causal window, MHA; full at 128;
    # a prefilled cache at the longest
    assert len(long) == 2 + 5 + 4 + 1 + 2 * jax
    for row in long[2:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[3]) > 0 and float(cells[4]) > 0  # seconds, GiB


@pytest.mark.skipif(
    harness.BACKEND != "jax",
    reason="the GPU scripts run Keras on JAX; here they run on the CPU at tiny sizes",
)
@pytest.mark.parametrize(
    "script",
    [
        ["benchmarks/gpu.py", "--tiny"],
    ],
    ids=["gpu"],
)
def test_gpu_scripts_run_and_check_on_cpu(script, tmp_path):
    """The GPU benchmark does not rot between GPU runs: it runs on the CPU
    at tiny sizes. (`gpu_attention_check.py` times GPU-sized steps, too slow
    for a CPU; the attention tests check the same semantics here.)"""
    env = {**os.environ, "KERAS_BACKEND": "jax", "OUT": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, *script], cwd=ROOT, env=env, capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    if script[0].endswith("gpu.py"):
        assert "| QKVAttention vs MultiHeadAttention" in done.stdout
