"""The tutorials run, write their figure, and print numbers that hold.

Every `examples/NN_*.py` runs with `--quick` in its own process (as CI and
users run it), and the lesson each one teaches is checked on the numbers it
prints. One tutorial is also converted to a notebook and executed, so the
notebook path keeps working.
"""

import importlib.util
import pathlib
import re

import pytest

from tests import harness

# The tutorials run once, on the default TensorFlow backend (each is a
# minute of training); every component is tested on every backend by the
# other test files.
pytestmark = pytest.mark.skipif(
    harness.BACKEND != "tensorflow",
    reason="tutorials run on the default TensorFlow backend only",
)

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run_all = _load("run_all")
TUTORIALS = run_all.tutorials()


def _number(pattern, text):
    match = re.search(pattern, text)
    assert match, f"pattern {pattern!r} not found in the tutorial output"
    return float(match.group(1))


# What each lesson rests on, read from the tutorial's own printout.
def _check_01(out):
    assert abs(_number(r"\(difference ([-+.\deE]+)\)", out)) < 1e-4
    zeros = [float(z) for z in re.findall(r"zero activations\s+([\d.]+)%", out)[:4]]
    assert zeros[-1] > zeros[0] + 5.0  # the largest l1 gives a sparser code


def _check_02(out):
    assert _number(r"max \|w_plain - w_asked\| after training: ([\d.e+-]+)", out) == 0
    plain = _number(r"plain \(no penalty\), argmax\s.*?steps\s+([\d.]+)%", out)
    ours = _number(r"ours \(expected-index penalty\), argmax\s.*?steps\s+([\d.]+)%", out)
    assert ours < plain
    decoded = re.findall(r"monotone_decode.*?steps\s+([\d.]+)%", out)
    assert decoded and all(float(v) == 0.0 for v in decoded)


def _check_03(out):
    un = _number(r"unmasked\s.*?pad to 120\) ([\d.]+)", out)
    ours = _number(r"masked \(ours\)\s.*?pad to 120\) ([\d.]+)", out)
    assert ours > un
    assert _number(r"masked \(ours\)\s.*?max \|p120 - p40\| ([\d.e+-]+)", out) < 1e-5


def _check_04(out):
    ours = _number(r"QKVAttention, masked\s+test acc ([\d.]+)", out)
    flat = _number(r"no projections\s+test acc ([\d.]+)", out)
    assert ours > flat + 0.2
    assert _number(r"MultiHeadAttention\| = ([\d.e+-]+)", out) < 1e-5


def _check_05(out):
    assert _number(r"NonNegative\s.*?negative entries\s+([\d.]+)%", out) == 0.0
    assert _number(r"unconstrained\s.*?negative entries\s+([\d.]+)%", out) > 0.0
    assert _number(r"max \|w_clip - w_NonNegative\| after training: ([\d.e+-]+)", out) < 1e-6


def _check_06(out):
    assert _number(r"power\s+1000: rows with NaN\s+naive\s+([\d.]+)%", out) == 100.0
    nan_ours = re.findall(r"log-space\s+([\d.]+)%", out)
    assert nan_ours and all(float(v) == 0.0 for v in nan_ours)
    assert _number(r"\((\d+)x\); same vectors", out) >= 10


def _check_07(out):
    plain = _number(r"plain\s+clean test accuracy ([\d.]+)", out)
    stuck = _number(r"trace_penalty=0\s+clean test accuracy ([\d.]+)", out)
    ours = _number(r"trace_penalty=0.05\s+clean test accuracy ([\d.]+)", out)
    assert ours > plain + 0.15 and ours > stuck + 0.15
    assert _number(r"trace_penalty=0\s+clean.*max \|Q - Q_true\| ([\d.]+)", out) > 0.4
    assert _number(r"columns sum to ([\d.]+)\.\.", out) > 0.99999
    assert _number(r"columns sum to [\d.]+\.\.([\d.]+)", out) < 1.00001


def _check_08(out):
    plain = _number(r"distance_penalty=0.0: test MSE ([\d.]+)", out)
    local = _number(r"distance_penalty=2.0: test MSE ([\d.]+)", out)
    assert local < 0.7 * plain
    ae = _number(r"kl_weight=0.0:.*circle ([\d.]+)", out)
    vae = _number(r"kl_weight=1.0:.*circle ([\d.]+)", out)
    assert vae < ae
    full = _number(r"Conv2D\s+parameters\s+(\d+)", out)
    decomposed = _number(r"DecomposedConv2D\s+parameters\s+(\d+)", out)
    assert decomposed < full
    fine = _number(r"fine-tuned\s+accuracy: seen words [\d.]+, never-seen words ([\d.]+)", out)
    ours = _number(r"PretrainedEmbedding\s+accuracy: seen words [\d.]+, never-seen words ([\d.]+)", out)
    assert ours > fine
    assert _number(r"PretrainedEmbedding\s+accuracy.*pretrained vectors ([\d.]+)", out) == 0.0


def _check_09(out):
    assert "same text with and without the cache: True" in out
    assert _number(r"speedup ([\d.]+)x\)", out) > 1.0


def _check_10(out):
    assert "initialized=True" in out
    assert abs(_number(r"WeightNormalization\(Conv2D\):\s+mean ([-\d.]+)", out)) < 1e-2
    assert abs(_number(r"per-channel std ([\d.]+)", out) - 1.0) < 1e-2
    for name in ("plain", "WeightNormalization"):
        first = _number(rf"{name}: training loss ([\d.e-]+) \(epoch 1\)", out)
        last = _number(rf"{name}: training loss [\d.e-]+ \(epoch 1\) -> ([\d.e-]+)", out)
        assert last < first


def _check_11(out):
    softmax = _number(r"softmax [\d.]+ vs CRF [\d.]+; invalid transitions (\d+)", out)
    crf = _number(r"invalid transitions \d+ vs (\d+)", out)
    assert crf < softmax
    f1_softmax = _number(r"span F1 softmax ([\d.]+)", out)
    f1_crf = _number(r"span F1 softmax [\d.]+ vs CRF ([\d.]+)", out)
    assert f1_crf > f1_softmax - 0.01
    forbidden = _number(r"forbidden ([-\d.]+)", out)
    allowed = _number(r"allowed ([-\d.]+)", out)
    assert forbidden < allowed
    # The constrained CRF: no invalid sequence, at least the learned CRF's F1.
    assert _number(r"constrained CRF span F1 [\d.]+, invalid transitions (\d+)", out) == 0
    assert _number(r"constrained CRF span F1 ([\d.]+)", out) > f1_crf - 0.02
    readings = [float(p) for p in re.findall(r"top \d \(p = ([\d.]+)\)", out)]
    assert len(readings) == 3 and readings == sorted(readings, reverse=True) and sum(readings) <= 1.0 + 1e-3
    assert "marginals sum to 1 at every word: True, 0 at padding: True" in out


def _check_12(out):
    assert _number(r"max \|output after - output before\| = ([\d.e+-]+)", out) < 1e-5
    assert "same variable paths: True" in out
    ours = _number(r"peak at \d+ steps: QKVAttention ([\d.]+) GiB", out)
    theirs = _number(r"peak at \d+ steps: QKVAttention [\d.]+ GiB vs KerasHub's ([\d.]+) GiB", out)
    assert ours <= theirs + 0.1  # GiB; at the quick run's short lengths, about equal
    first = _number(r"training at \d+ steps: loss ([\d.]+) ->", out)
    last = _number(r"training at \d+ steps: loss [\d.]+ -> ([\d.]+)", out)
    assert last < first - 1.0
    assert _number(r"(\d+) of 16 follow their token's successor", out) >= 12


# Tutorials that need an optional package, and the command that installs it.
REQUIRES = {"12": ("keras_hub", "`make test-hub` installs KerasHub for tutorial 12")}

CHECKS = {
    "01": _check_01, "02": _check_02, "03": _check_03,
    "04": _check_04, "05": _check_05, "06": _check_06,
    "07": _check_07, "08": _check_08, "09": _check_09,
    "10": _check_10, "11": _check_11, "12": _check_12,
}


def test_every_tutorial_has_a_check():
    assert len(TUTORIALS) >= 6
    assert sorted(p.name[:2] for p in TUTORIALS) == sorted(CHECKS)


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_quick_run(path, tmp_path):
    if path.name[:2] in REQUIRES:
        module, reason = REQUIRES[path.name[:2]]
        pytest.importorskip(module, reason=reason)
    ok, seconds, result, output = run_all.run_tutorial(path, tmp_path, quick=True)
    assert ok, output[-3000:]
    assert (tmp_path / f"{path.stem}.png").stat().st_size > 10_000
    CHECKS[path.name[:2]](output)


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_header(path):
    text = path.read_text()
    assert text.startswith("# %% [markdown]\n# # ")
    for field in ("Author:", "Date created:", "Last modified:", "Description:"):
        assert f"**{field}**" in text, field
    assert "--quick" in text and "--output-dir" in text


def test_tutorial_runs_as_notebook(tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    to_notebooks = _load("to_notebooks")
    path = next(p for p in TUTORIALS if p.name.startswith("03_"))
    notebook_path = to_notebooks.convert(path, tmp_path)
    notebook = nbformat.read(notebook_path, as_version=4)
    kinds = {cell.cell_type for cell in notebook.cells}
    assert kinds == {"code", "markdown"}
    monkeypatch.setenv("KAQ_TUTORIAL_QUICK", "1")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    client = nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    outputs = "".join(
        output.get("text", "")
        for cell in notebook.cells if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    )
    assert "RESULT" in outputs
    assert (tmp_path / "examples" / "output" / f"{path.stem}.png").is_file()
