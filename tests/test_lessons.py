"""python -m kern.lessons: every step of the ladder runs and is checked (--quick, as in CI),
the figures are written, and a step that computes wrong is reported and fails the run."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kern.backend import get_training_backend
from kern.lessons import __main__ as lessons
from kern.lessons import backward, steps

pytestmark = pytest.mark.slow  # left out of the fast subset: pytest -m 'not slow'

REPO = Path(__file__).resolve().parent.parent
FIGURES = {"ladder.png", "roofline.png", "im2col.png", "winograd.png", "lanes.png", "caffe-time.png"}
CPU_STEPS = set(range(1, 10)) | set(range(14, 20)) | {21}  # 10-13 and 20 need cudasim (g++) or a GPU


def test_quick_ladder_runs_and_checks_every_step(tmp_path):
    result = subprocess.run([sys.executable, "-m", "kern.lessons", "--quick", "--out", str(tmp_path), "--repeat", "1"],
                            capture_output=True, text=True, cwd="/", timeout=600)
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "ladder.json").read_text())
    rows = {row["step"]: row for row in record["rows"]}
    expected = set(range(1, 22)) if shutil.which("g++") else CPU_STEPS
    assert set(rows) == expected
    for row in rows.values():
        assert row["max_error"] <= lessons.TOLERANCE, row
        assert row["ms"] is None or row["ms"] > 0
    assert all(rows[n]["gflops"] > 0 for n in (*range(1, 10), 14, 15, 16, 17))
    assert all(rows[n]["ms"] > 0 for n in CPU_STEPS)
    layers = rows[21]["per_layer"]  # tiny's layers, each timed forward and backward
    assert len(layers) > 10 and all(f > 0 for _, f, _ in layers) and sum(b for _, _, b in layers) > 0
    assert FIGURES <= {p.name for p in tmp_path.iterdir()}
    assert "max error" in result.stdout and "register tiles and SIMD" in result.stdout


def test_a_wrong_step_is_reported_and_fails_the_run(monkeypatch, capsys):
    wrong = steps.gemm_plain

    def off_by_one_filter(rows, weights_t):
        out = wrong(rows, weights_t)
        out[:, 0] += 1.0  # the first filter's sums, all wrong
        return out

    monkeypatch.setattr(steps, "gemm_plain", off_by_one_filter)
    assert lessons.main(["--quick", "--only", "3,4,5", "--repeat", "1"]) == 1
    err = capsys.readouterr().err
    assert "error: step 4 (im2row + a plain GEMM): max error" in err
    assert "step 3" not in err.split("error:")[1] and "step 5" not in err.split("error:")[-1]


def test_a_wrong_backward_step_is_reported(monkeypatch, capsys):
    """The CPU weight gradient's last pass (adding into the update buffer) planted away: step
    17 fails, step 16 (the NumPy way) does not."""
    from kern.cpu import wgrad

    monkeypatch.setattr(wgrad, "add_as_oihw", lambda dw, ksize, per_group, into: None)
    assert lessons.main(["--quick", "--only", "16,17", "--repeat", "1"]) == 1
    err = capsys.readouterr().err
    assert "error: step 17 (weight gradient: micro-kernel, no im2col): max error" in err
    assert "error: step 16" not in err


@pytest.mark.parametrize("argv,message", [
    (["--only", "22"], "steps are 1 to 21"),
    (["--only", "x"], "expected step numbers"),
    (["--layer", "darknet19:1"], "is [max], not a convolution"),
    (["--layer", "darknet19:999"], "expected CFG:INDEX"),
])
def test_bad_arguments_get_one_line(argv, message):
    result = subprocess.run([sys.executable, "-m", "kern.lessons", "--quick", *argv], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_kern_simd_gets_one_line_before_any_step():
    result = subprocess.run([sys.executable, "-m", "kern.lessons", "--quick"], capture_output=True, text=True,
                            cwd=REPO, timeout=120, env={**os.environ, "KERN_SIMD": "sse9"})
    assert result.returncode == 2 and result.stderr.strip().endswith("expected one of avx512, avx2, generic")
    assert "Traceback" not in result.stderr and "step 1" not in result.stderr


def test_winograd_matches_the_definition_on_odd_sizes(rng):
    import numpy as np

    from kern.ref import conv2d_loops

    x = rng.standard_normal((2, 3, 7, 5)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    p = steps.Problem("odd", x, w, 1, 1, 1)
    run, to_nchw = steps.conv_winograd(p)
    got = to_nchw(run())
    expected = conv2d_loops(x.astype(np.float64), w.astype(np.float64), 1, 1, 1)
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()


def test_the_gpu_branch_times_the_cuda_steps(cudasim, monkeypatch, tmp_path):
    """On a GPU the CUDA steps are timed: that code runs here on cudasim with a stand-in for
    the CUDA-event timer, so that a mistake in it costs no GPU time."""
    monkeypatch.setattr(lessons, "cuda_backend", lambda: (cudasim, True))
    monkeypatch.setattr(lessons, "gpu_median_ms", lambda run, **_: (run(), 2.0)[1])
    monkeypatch.setattr(backward, "cuda_training", lambda: (get_training_backend("cudasim"), True))
    monkeypatch.setattr(backward, "gpu_median_ms", lambda run, **_: (run(), 2.0)[1])
    assert lessons.main(["--quick", "--only", "10,11,12,13,20", "--out", str(tmp_path)]) == 0
    rows = {row["step"]: row for row in json.loads((tmp_path / "ladder.json").read_text())["rows"]}
    assert all(rows[n]["ms"] == 2.0 and rows[n]["gflops"] > 0 for n in (10, 11, 12, 20))
    assert rows[11]["speedup"] == 1.0 and rows[13]["ms"] == 2.0
