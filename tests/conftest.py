import signal
import zlib

import numpy as np
import pytest

from kern import KernError, get_backend


@pytest.fixture
def rng(request):
    # A fresh stream per test, reproducible from the test's name (crc32: str hash() is salted
    # per process).
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(scope="session")
def ref64():
    return get_backend("ref", dtype=np.float64)


@pytest.fixture(scope="session")
def cpu():
    return get_backend("cpu")


def backend_or_skip(name: str):
    """The backend, or a skip saying why it is unavailable (no cupy, no GPU, no C++ compiler
    for cudasim). Any other failure to make it (a kernel that does not compile) fails."""
    try:
        return get_backend(name)
    except KernError as error:
        if "is not available" not in str(error):
            raise
        pytest.skip(str(error))


@pytest.fixture(scope="session", params=["cpu", "cuda", "cudasim"])
def fast(request):
    """Each fast backend in turn; cuda skips (with the reason) where there is no cupy or GPU,
    cudasim (the CUDA backend's kernels on the CPU) where there is no C++ compiler."""
    return backend_or_skip(request.param)


@pytest.fixture(scope="session")
def cudasim():
    return backend_or_skip("cudasim")


@pytest.fixture(scope="session")
def cuda():
    return backend_or_skip("cuda")


def assert_close(actual, expected, rtol=1e-5):
    """Float32 kernels vs a float64 reference: |a - e| <= rtol * max|e| elementwise."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert np.all(np.isfinite(actual)), "unwritten (NaN-poisoned) or non-finite outputs"
    scale = max(float(np.abs(expected).max()), 1e-30)
    worst = float(np.abs(actual.astype(np.float64) - expected).max()) / scale
    assert worst <= rtol, f"max error {worst:.3g} relative to max |expected|, allowed {rtol}"


def pytest_collection_modifyitems(items):
    """Every test that runs on cudasim is selected by `-k cudasim` (docs/cudasim.md), also those
    whose names do not say it: they take the cudasim fixture."""
    for item in items:
        if "cudasim" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cudasim)


def default_sigint() -> None:
    """Popen's preexec_fn for a child the test interrupts: Ctrl-C's default action, in case this
    test process inherited SIGINT ignored (a background job's), which the child would keep."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
