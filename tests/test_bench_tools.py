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
    profile("cfg/tiny.cfg", threads=1, repeat=1)
    out = capsys.readouterr().out
    spec = nets.load_spec("cfg/tiny.cfg")
    assert out.count(" conv ") >= sum(layer_kind(layer).startswith("conv") for layer in spec.layers)
    assert "# by kind" in out and "conv 1x1" in out and "GFLOP/s" in out
