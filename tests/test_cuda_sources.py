"""Every CUDA source compiles for sm_90 (Hopper), on any machine with nvcc: no GPU needed, so a
syntax or type error in a .cu file cannot land even though CI never has a GPU."""

import shutil
import subprocess

import pytest

from kern.cuda.sources import FOLDER, SOURCES, compile_options

pytestmark = pytest.mark.slow  # left out of the fast subset: pytest -m 'not slow'

NVCC = shutil.which("nvcc")


def test_every_cu_file_is_listed():
    assert sorted(p.name for p in FOLDER.glob("*.cu")) == sorted(SOURCES)


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")
@pytest.mark.parametrize("cp_async", [False, True], ids=["plain", "cp.async"])
@pytest.mark.parametrize("source", SOURCES)
def test_compiles_for_sm90(tmp_path, source, cp_async):
    command = [NVCC, "-arch=sm_90", "--cubin", "-Werror=all-warnings", *compile_options(cp_async),
               "-o", str(tmp_path / "out.cubin"), str(FOLDER / source)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out.cubin").stat().st_size > 0
