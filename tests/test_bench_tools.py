"""The benchmark tools' own arithmetic and output (their timings are not tested: they are
measurements)."""

import pytest

import nets
from bench.layers import layer_kind, profile
from bench.scaling import amdahl_serial_fraction


def test_amdahl_fit_recovers_a_known_serial_fraction():
    threads = [1, 2, 4, 8]
    seconds = [10 * (0.2 + 0.8 / t) for t in threads]
    assert amdahl_serial_fraction(threads, seconds) == pytest.approx(0.2)
    assert amdahl_serial_fraction([1, 2], [1.0, 0.5]) == pytest.approx(0.0)


def test_layer_kinds_split_convolutions():
    kinds = [layer_kind(layer) for layer in nets.load_spec("cfg/resnext50.cfg").layers]
    assert {"conv 1x1", "conv dense", "conv grouped", "res", "max", "avg", "softmax"} == set(kinds)


def test_layer_profile_prints_every_layer_and_the_kinds(capsys):
    profile(["cfg/tiny.cfg", "cfg/darknet.cfg"], threads=1, repeat=1, rounds=2)
    out = capsys.readouterr().out
    for cfg in ("cfg/tiny.cfg", "cfg/darknet.cfg"):
        table = out[out.index(f"# {cfg}") :]
        spec = nets.load_spec(cfg)
        assert "x 2 rounds" in table.splitlines()[0]
        assert table.count(" conv ") >= sum(layer_kind(layer).startswith("conv") for layer in spec.layers)
    assert out.count("# by kind") == 2 and "conv 1x1" in out and "GFLOP/s" in out
