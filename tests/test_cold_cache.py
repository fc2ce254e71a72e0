"""A process that compiles the CPU kernels and one that loads them from Numba's cache compute
the same bits. With fastmath=True, parallel kernels gave different results in the two (the
same inputs, batchnorm's input gradient 1-2 ulp apart), so a user's first training run was not
the runs after it: the element-wise kernels of the training path are compiled without it."""

import os
import subprocess
import sys

import numpy as np

SCRIPT = """
import sys
import numpy as np
from kern.cpu import batchnorm, channels, elementwise

rng = np.random.default_rng(0)
shape = (2, 7, 9, 48)
dy, y, z, src = (rng.standard_normal(shape).astype(np.float32) for _ in range(4))
mean, scales, biases, slope = (rng.standard_normal(48).astype(np.float32) for _ in range(4))
variance = rng.random(48).astype(np.float32) + 0.5
out = {}
for act in (0, 1):
    out[f"bn_forward_{act}"] = batchnorm.batchnorm_forward(
        z, scales, biases, np.zeros(48, np.float32), np.ones(48, np.float32), act)[0]
    out[f"bn_backward_{act}"] = batchnorm.batchnorm_backward(dy.copy(), y, z, mean, variance, scales, biases, act)[0]
    target = np.empty_like(z)
    elementwise.shortcut(z, src, 0.7, 1.3, act, target)
    out[f"shortcut_{act}"] = target
    rows = np.empty((shape[0] * shape[1] * shape[2], 48), np.float32)
    channels.affine(z.reshape(-1, 48), scales, biases, slope, act, rows)
    out[f"affine_{act}"] = rows
np.savez(sys.argv[1], **out)
"""


def test_a_compiling_process_and_a_cached_one_agree_bit_for_bit(tmp_path):
    environment = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    results = []
    for run in ("cold", "warm"):  # the first compiles and fills the empty cache, the second loads it
        path = tmp_path / f"{run}.npz"
        subprocess.run([sys.executable, "-c", SCRIPT, str(path)], check=True, env=environment)
        results.append(np.load(path))
    cold, warm = results
    assert sorted(cold.files) == sorted(warm.files)
    for name in cold.files:
        assert np.array_equal(cold[name], warm[name]), name

