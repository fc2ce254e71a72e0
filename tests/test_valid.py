"""python -m nets.valid: accuracy over the shared ImageNet sample, and every kind of source."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO.parent / "shared" / "imagenet-sample"
needs_sample = pytest.mark.skipif(not SAMPLE.is_dir(), reason="../shared/imagenet-sample is absent")


def valid(*args, cwd=REPO):
    return subprocess.run(
        [sys.executable, "-m", "nets.valid", "cfg/tiny.cfg", "weights/tiny.weights", *map(str, args)],
        capture_output=True, text=True, cwd=cwd, timeout=600,
    )


def first_images(count):
    return sorted(p for p in SAMPLE.iterdir() if p.suffix == ".JPEG")[:count]


@needs_sample
def test_first_fifty_sample_images_give_kerns_own_counts(tmp_path):
    # Counts recorded from kern itself (centre crop, batch 8); a change in any kernel, the
    # image pipeline or the labelling shows up here.
    result = valid(SAMPLE, "--limit", "50", "--workers", "2", "--json", tmp_path / "r.json")
    assert result.returncode == 0, result.stderr
    assert "top-1 74.00% (37/50), top-5 86.00% (43/50)" in result.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["counted"] == 50 and len(report["images"]) == 50
    first = report["images"][0]
    assert first["label"] == 448 and first["label_name"] == "tench"  # Darknet's class order and len(first["top"]) == 5


@pytest.fixture
def image_folder(tmp_path):
    """ImageFolder style: a folder per synset, plus an unlabelled and a broken image."""
    if not SAMPLE.is_dir():
        pytest.skip("../shared/imagenet-sample is absent")
    root = tmp_path / "images"
    for image in first_images(4):
        folder = root / image.name.split("_")[0]
        folder.mkdir(parents=True)
        shutil.copy(image, folder / "picture.jpg")
    (root / "misc").mkdir()
    shutil.copy(first_images(5)[4], root / "misc" / "unlabelled.jpg")
    (root / "n01443537").mkdir(exist_ok=True)  # a labelled folder
    (root / "n01443537" / "broken.jpg").write_bytes(b"not a jpeg")
    return root


def test_folder_source_counts_unlabelled_and_broken(image_folder):
    result = valid(image_folder, "--workers", "0")
    assert result.returncode == 0, result.stderr
    assert "/4)" in result.stdout.splitlines()[0]
    assert "1 images had no label in their path" in result.stdout
    assert "1 images could not be read" in result.stdout and "broken.jpg" in result.stdout


def test_list_and_data_sources_agree_with_the_folder(image_folder, tmp_path):
    listed = sorted(str(p) for p in image_folder.rglob("*.jpg"))
    list_file = tmp_path / "valid.list"
    list_file.write_text("\n".join(listed) + "\n")
    data_file = tmp_path / "sample.data"
    data_file.write_text(f"classes=1000\nvalid = {list_file}\nlabels = data/imagenet.labels.list\n")
    by_folder = valid(image_folder, "--workers", "0").stdout.splitlines()[0].split(" in ")[0]
    by_list = valid(list_file, "--workers", "0").stdout.splitlines()[0].split(" in ")[0]
    by_data = valid(data_file, "--workers", "0").stdout.splitlines()[0].split(" in ")[0]
    assert by_folder == by_list == by_data


def test_limit_and_ten_crops(image_folder):
    result = valid(image_folder, "--workers", "0", "--limit", "2", "--crops", "10")
    assert result.returncode == 0, result.stderr
    # The first two paths in order: misc/unlabelled.jpg, then one labelled image.
    assert "(1/1)" in result.stdout.splitlines()[0]
    assert "1 images had no label" in result.stdout


def test_missing_source_is_one_line():
    result = valid("no-such.list")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "cannot read image list" in result.stderr
