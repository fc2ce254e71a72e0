"""Which files are Caffe's (no protobuf needed to ask)."""

from __future__ import annotations

from pathlib import Path


def is_prototxt(path: str | Path) -> bool:
    return str(path).endswith(".prototxt")


def is_caffemodel(path: str | Path) -> bool:
    return str(path).endswith(".caffemodel")


# Where the trained weights of each shipped prototxt are published (none can be downloaded
# from here: file hosts); `nets.predict --list` and the error for missing weights say it.
PUBLISHED = {
    "bvlc_googlenet": "http://dl.caffe.berkeleyvision.org/bvlc_googlenet.caffemodel",
    "ResNet-50-deploy": "the OneDrive link in KaimingHe/deep-residual-networks' README",
    "deploy_densenet121": "the links in soeaver/caffe-model's cls/README.md",
    "deploy_resnext26-32x4d-priv": "the links in soeaver/caffe-model's cls/README.md",
    "deploy_dpn68-extra": "the links in soeaver/caffe-model's cls/README.md",
    "SE-ResNet-50": "the links in hujie-frank/SENet's README",
}


def where_published(prototxt: str | Path) -> str:
    return PUBLISHED.get(Path(prototxt).stem, "wherever the model's authors publish them")
