"""What a wheel carries and what a user finds without a checkout: the package list in
pyproject.toml against the tree, shipped cfgs by short name, --list, --version, the API's
labels. (.ci/wheel builds the wheel, installs it outside the checkout and runs it from /.)"""

import fnmatch
import subprocess
import sys
from pathlib import Path

import pytest

import kern
import nets
from kern.errors import KernError
from nets.data import CFG_DIR, SHIPPED, find_cfg

REPO = Path(__file__).resolve().parent.parent
tomllib = pytest.importorskip("tomllib")  # Python 3.11+
SETUPTOOLS = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_in_the_tree_is_in_the_wheel():
    in_tree = {
        ".".join(init.parent.relative_to(REPO).parts)
        for top in ("kern", "nets") for init in (REPO / top).rglob("__init__.py")
    }
    assert in_tree <= set(SETUPTOOLS["packages"])


@pytest.mark.parametrize(("package", "folder"), [
    ("kern.cuda", "kern/cuda"),
    ("kern.cudasim", "kern/cudasim"),
    *((package, folder) for package, folder in SETUPTOOLS["package-dir"].items()),
])
def test_every_data_file_is_in_the_wheel(package, folder):
    """Every non-Python file of a shipped folder matches the package-data patterns (a new kind
    of file, such as a CUDA header, would otherwise be left out of the wheel silently)."""
    patterns = SETUPTOOLS["package-data"][package]
    files = [p.name for p in (REPO / folder).iterdir() if p.is_file() and p.suffix not in (".py", ".pyc")]
    assert files
    assert [name for name in files if not any(fnmatch.fnmatch(name, pattern) for pattern in patterns)] == []


def test_shipped_cfgs_resolve_by_short_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the checkout: "cfg/darknet19.cfg" does not exist here
    for name in ("darknet19", "darknet19.cfg", "cfg/darknet19.cfg"):
        assert find_cfg(name) == CFG_DIR / "darknet19.cfg"
    (tmp_path / "darknet19").write_text("[net]\n")  # a file by that name wins
    assert find_cfg("darknet19") == Path("darknet19")
    assert find_cfg("nope") == Path("nope")
    with pytest.raises(KernError, match="cannot read cfg nope.*--list"):
        nets.load_spec("nope")


def test_api_loads_a_shipped_network_by_name_with_its_labels(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    net = nets.load("tiny", backend="ref")  # weights found among the shipped ones
    assert len(net.labels) == 1000 and net.labels[0] == "kit fox"
    assert nets.SAMPLE_IMAGE.is_file() and nets.SAMPLE_IMAGE.parent.parent == SHIPPED
    with pytest.raises(KernError, match="no weights for .*darknet19.cfg.*--download"):
        nets.load("darknet19", backend="ref")


def cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "nets.predict", *args], capture_output=True, text=True, cwd=cwd, timeout=120,
    )


def test_version_and_list(tmp_path):
    version = cli("--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.strip() == f"{kern.DISTRIBUTION} {kern.__version__}"
    listing = cli("--list", cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    darknet, caffe = listing.stdout.split("\n\n")
    rows = {line.split()[0]: line for line in darknet.splitlines()[1:]}
    assert set(rows) == {p.stem for p in CFG_DIR.glob("*.cfg")} and len(rows) == 20  # 18 ImageNet + 2 CIFAR
    prototxts = {line.split()[0]: line for line in caffe.splitlines()[1:]}
    assert set(prototxts) == {p.stem for p in (CFG_DIR / "caffe").glob("*.prototxt")} and len(prototxts) == 6
    assert prototxts["bvlc_googlenet"].split()[1:3] == ["224x224x3", "3.17"]
    assert "dl.caffe.berkeleyvision.org" in prototxts["bvlc_googlenet"]
    assert rows["darknet19"].split()[1:4] == ["256x256x3", "7.29", "83.4"]
    assert str(SHIPPED / "weights" / "tiny.weights") in rows["tiny"]
    assert "--download" in rows["darknet53"]


def test_short_name_on_the_command_line(tmp_path):
    result = cli("darknet", "--random-weights", "1", "--quiet", str(nets.SAMPLE_IMAGE), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "random weights, seed 1" in result.stdout


def test_console_scripts_license_and_types_ship():
    import importlib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for script in ("kern-predict", "kern-valid", "kern-train"):
        module, function = project["scripts"][script].split(":")
        assert callable(getattr(importlib.import_module(module), function))
    assert project["license-files"][0] == "LICENSE" and "public domain" in (REPO / "LICENSE").read_text()
    for pattern in project["license-files"][1:]:  # the Caffe files' own licences
        assert list(REPO.glob(pattern)), pattern
    for package in ("kern", "nets"):
        assert (REPO / package / "py.typed").exists() and "py.typed" in SETUPTOOLS["package-data"][package]
    listing = subprocess.run([sys.executable, "-m", "nets"], capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0 and "python -m nets.train" in listing.stdout
