"""The benchmark tools' own arithmetic and output (their timings are not tested: they are
measurements)."""

from pathlib import Path

import numba
import numpy as np
import pytest

import nets
from bench.layers import AgainBackend, SplitSeconds, layer_kind, profile
from bench.progress import Progress
from bench.scaling import amdahl_serial_fraction, measure
from nets.layers import Convolutional
from nets.weights import random_weights

REPO = Path(__file__).resolve().parent.parent


def test_amdahl_fit_recovers_a_known_serial_fraction():
    threads = [1, 2, 4, 8]
    seconds = [10 * (0.2 + 0.8 / t) for t in threads]
    assert amdahl_serial_fraction(threads, seconds) == pytest.approx(0.2)
    assert amdahl_serial_fraction([1, 2], [1.0, 0.5]) == pytest.approx(0.0)


def test_scaling_measures_each_thread_count_for_the_network_and_each_layer():
    counts = sorted({1, numba.config.NUMBA_NUM_THREADS})
    totals, per_layer = measure("cfg/tiny.cfg", counts, batch=1, repeat=2, rounds=2)
    assert len(totals) == len(counts)
    assert per_layer.shape == (len(counts), len(nets.load_spec("cfg/tiny.cfg").layers))
    assert (per_layer > 0).all()
    for total, layers in zip(totals, per_layer):
        # Medians of sums vs sums of medians, of 2 x 2 passes: a busy machine stretches one
        # pass (1.68x the layers' sum once, in CI beside other work); a wrong sum is off by far more.
        assert 0.5 * layers.sum() <= total <= 2.0 * layers.sum()


def test_progress_announces_each_step_with_an_estimate(capsys):
    progress = Progress(3)
    for label in ("a", "b", "c"):
        progress.step(label)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" (")[0] for line in lines] == ["[1/3] a", "[2/3] b", "[3/3] c"]
    assert "left" not in lines[0] and lines[2].endswith("s left)")


def test_layer_kinds_split_convolutions():
    kinds = [layer_kind(layer) for layer in nets.load_spec("cfg/resnext50.cfg").layers]
    assert {"conv 1x1", "conv dense", "conv grouped", "res", "max", "avg", "softmax"} == set(kinds)


def test_layer_profile_prints_every_layer_and_the_kinds(capsys):
    profile(["cfg/tiny.cfg", "cfg/darknet.cfg"], threads=1, repeat=1, rounds=2)
    out, err = capsys.readouterr()
    steps = [line for line in err.splitlines() if line.startswith("[")]
    assert steps[0].startswith("[1/") and steps[-1].startswith(f"[{len(steps)}/{len(steps)}] cfg/darknet.cfg")
    for cfg in ("cfg/tiny.cfg", "cfg/darknet.cfg"):
        table = out[out.index(f"# {cfg}") :]
        spec = nets.load_spec(cfg)
        assert "x 2 rounds" in table.splitlines()[0]
        assert table.count(" conv ") >= sum(layer_kind(layer).startswith("conv") for layer in spec.layers)
    assert out.count("# by kind") == 2 and "conv 1x1" in out and "GFLOP/s" in out


def test_again_runs_each_op_twice_and_times_the_second_apart():
    spec = nets.load_spec("cfg/tiny.cfg")
    weights = random_weights(spec.layers, seed=0)
    backend = nets.make_backend("cpu", threads=1)
    calls = []
    conv2d = backend.conv2d
    backend.conv2d = lambda x, c, **options: calls.append(c) or conv2d(x, c, **options)
    images = np.random.default_rng(1).random((1, *spec.input_shape), dtype=np.float32)
    expected = nets.Network(spec, weights, backend).forward(images)
    convs = len(calls)
    assert convs == sum(isinstance(layer, Convolutional) for layer in spec.layers)

    again = AgainBackend(backend)
    seconds = SplitSeconds(again)
    calls.clear()
    out = nets.Network(spec, weights, again).forward(images, layer_seconds=seconds)
    assert np.array_equal(out, expected)
    assert len(calls) == 2 * convs
    assert len(seconds) == len(seconds.again) == len(spec.layers)
    for layer, first, second in zip(spec.layers, seconds, seconds.again):
        assert first > 0 and second > 0, layer.describe()  # every tiny layer is one op


def test_layer_profile_with_again_prints_second_run_columns(capsys):
    profile(["cfg/tiny.cfg"], threads=1, repeat=1, rounds=1, again=True)
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[2:4] == ["kern", "kern"] and "kern 2nd" in lines[1]
    conv_1x1 = next(line for line in lines if line.strip().startswith("conv 1x1"))
    assert conv_1x1.count("(") == lines[1].count(" 2nd") * 2  # a GFLOP/s figure per column


def test_op_benchmarks_run_grouped_convolutions_linked_as_the_network_does():
    from bench.test_ops import as_linked

    backend = nets.make_backend("cpu", threads=1)
    rng = np.random.default_rng(0)
    x = backend.asarray(rng.random((1, 128, 16, 16), dtype=np.float32))
    for groups, linked in ((32, True), (1, False)):
        weights = rng.standard_normal((128, 128 // groups, 3, 3), dtype=np.float32)
        conv = backend.prepare_conv(
            weights, np.zeros(128, np.float32), None, stride=1, padding=1, groups=groups, activation="leaky"
        )
        timed, timed_x = as_linked(backend, conv, x, rng)
        assert (timed.input_ready, timed.out_order is not None) == (linked, linked)
        assert (timed_x is x) != linked
        assert backend.conv2d(timed_x, timed).shape == (1, 16, 16, 128)


def test_cuda_check_runs_its_rows_on_cudasim(cudasim, monkeypatch, tmp_path):
    """bench.cuda_check is run only on a lent GPU (15 minutes): its code is exercised here,
    on cudasim with PyTorch on the CPU and a stand-in for the CUDA-event timer, so that a
    mistake costs no GPU time."""
    from bench import cuda_check
    from bench.torch_backend import TorchBackend

    text = (REPO / "cfg" / "tiny.cfg").read_text().replace("width=224", "width=32").replace("height=224", "height=32")
    (tmp_path / "tiny32.cfg").write_text(text)
    monkeypatch.setattr(cuda_check, "gpu_median_ms", lambda run, **_: (run(), 1.0)[1])
    kern, torch = type(cudasim)(), TorchBackend()
    cfg = str(tmp_path / "tiny32.cfg")
    convs = cuda_check.conv_rows(kern, type(cudasim)(cp_async=True), torch, (1,), names=(cfg,))
    layers = nets.load_spec(cfg).layers
    distinct = {(layer.in_shape, layer.describe()) for layer in layers if isinstance(layer, Convolutional)}
    assert len(convs) == len(distinct) and all(row.split()[-4] == "yes" for row in convs), convs
    networks = cuda_check.network_rows(kern, type(cudasim)(graphs=False), torch, names=(cfg,), batches=(1, 2))
    assert len(networks) == 2 and all(row.rstrip().endswith("yes") for row in networks)
    small = (REPO / "cfg" / "cifar_small.cfg").read_text().replace("batch=128", "batch=2")
    (tmp_path / "small.cfg").write_text(small)
    runs = ((str(tmp_path / "small.cfg"), 2, None), (str(tmp_path / "small.cfg"), 1, 20))
    training = cuda_check.training_rows("cudasim", "cpu", runs, folder=tmp_path)
    assert [row.split()[:2] for row in training] == [["small", "2"], ["small_20", "1"]], training


@pytest.mark.parametrize("tool", ["forward", "layers", "scaling", "nets", "train", "winograd"])
def test_bench_tools_say_a_bad_cfg_in_one_line(tool):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", f"bench.{tool}", "cfg/no-such.cfg"], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: ")


def test_ab_summary_counts_the_rounds_b_won():
    from bench.ab import summary

    line = summary("darknet53", [100.0, 120.0, 110.0], [90.0, 125.0, 100.0])
    assert "A    110.0 ms  B    100.0 ms  B/A 0.909" in line and "B faster in 2 of 3 rounds" in line


# One process runs both (pytest -n 2): the check that no worktree is left saw the other
# case's, still running, when they ran side by side; once more in a CI run on 2026-12-04 (a
# kern-ab- worktree of HEAD while the bad revision ran), so each run now makes its worktree
# under its own tmp_path and checks that one.
@pytest.mark.xdist_group("bench-ab")
@pytest.mark.parametrize(
    "revision,cfg,says",
    [("no-such-revision", "tiny", "bench.ab: no-such-revision:"), ("HEAD", "no-such-cfg", "bench.ab: ")],
)
def test_ab_says_a_bad_revision_or_cfg_in_one_line(revision, cfg, says, tmp_path):
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-m", "bench.ab", revision, cfg, "--rounds", "1"], capture_output=True, text=True,
        cwd=repo, env={**os.environ, "TMPDIR": str(tmp_path)},  # its worktree in here, not another run's
    )
    last = done.stderr.strip().splitlines()[-1]  # after bench.ab's progress lines
    assert done.returncode == 2 and last.startswith(says) and "Traceback" not in done.stderr
    worktrees = subprocess.run(["git", "worktree", "list"], capture_output=True, text=True, cwd=repo).stdout
    assert str(tmp_path) not in worktrees  # removed again


def test_train_benchmark_measures_both_peers_and_the_layers(tmp_path):
    """bench.train's worker on a small network: a step time, a peak, each layer's forward and
    backward, for kern and PyTorch (the same network, batch and threads)."""
    from bench.train import measure
    from nets.weights import fresh_weights, write_weights

    cfg = tmp_path / "small.cfg"
    cfg.write_text(
        "[net]\nbatch=4\nheight=12\nwidth=12\nchannels=3\nlearning_rate=0.1\n"
        "[convolutional]\nbatch_normalize=1\nfilters=8\nsize=3\npad=1\nactivation=leaky\n"
        "[maxpool]\nsize=2\nstride=2\n[dropout]\nprobability=.5\n"
        "[convolutional]\nfilters=5\nsize=1\nactivation=linear\n[avgpool]\n[softmax]\n"
    )
    weights = tmp_path / "start.weights"
    spec = nets.load_spec(cfg)
    write_weights(weights, spec.layers, fresh_weights(spec.layers, 0))
    for peer in ("kern", "torch"):
        result = measure(peer, str(cfg), str(weights), batch=6, threads=1, repeat=2, layers=True)
        assert result["seconds"] > 0 and result["peak_mb"] > 0
        assert np.array(result["layers"]).shape == (len(spec.layers), 2)


def test_busy_warning_only_on_a_loaded_machine():
    from kern.timing import busy_warning

    assert busy_warning(0.1) is None
    warning = busy_warning(2.5)
    assert warning.startswith("# warning: load average 2.50") and "may be off by a factor" in warning


def test_winograd_toggle_puts_those_layers_on_the_gemm():
    """bench.winograd's A side: the same network with its plain-Winograd layers on the direct
    GEMM gives the same output within Winograd's rounding."""
    from bench.winograd import without_winograd
    from kern.backend import get_backend
    from nets.network import Network

    spec = nets.load_spec("darknet19")
    weights = random_weights(spec.layers, seed=3)
    cpu = get_backend("cpu")
    winograd, gemm = Network(spec, weights, cpu), Network(spec, weights, cpu)
    assert without_winograd(gemm) == 10 and without_winograd(gemm) == 0
    image = np.random.default_rng(4).random((1, *spec.input_shape), dtype=np.float32)
    np.testing.assert_allclose(gemm.predict(image), winograd.predict(image), atol=1e-5)
