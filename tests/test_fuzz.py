"""The project's own fuzz test: mutated cfgs, weights files, images and command lines thrown at
`nets.predict` and `nets.valid`, each case in a child process (tests/fuzz_server.py).

Every case must end with exit status 0 or 2, never a signal, a hang, a traceback or a
warning; on 2 with its error on one line (`error: ...` or the usage line); on 0 with finite
percentages. Seeded and bounded: KERN_FUZZ_CASES (default 300) cases from KERN_FUZZ_SEED
(default 0), each within KERN_FUZZ_TIMEOUT seconds (default 60: a case may compile kernels).
A failing case prints its number, command line and files; KERN_FUZZ_KEEP=DIR keeps them.

    KERN_FUZZ_CASES=10000 KERN_FUZZ_SEED=1 pytest -q tests/test_fuzz.py
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import nets
from nets.caffe import read_net
from nets.caffe.blobs import random_blobs, write_caffemodel
from nets.data import DEFAULT_LABELS
from nets.weights import random_weights, write_weights

pytestmark = pytest.mark.slow  # left out of the fast subset: pytest -m 'not slow'

REPO = Path(__file__).resolve().parent.parent
CASES = int(os.environ.get("KERN_FUZZ_CASES", "300"))
SEED = int(os.environ.get("KERN_FUZZ_SEED", "0"))
TIMEOUT = float(os.environ.get("KERN_FUZZ_TIMEOUT", "60"))
CLASSES = 10

# Small networks that reach every layer kind and every CPU conv path: the GEMM (plain, strided,
# linked), groups in vector lanes (direct, strided, Winograd), the fused shortcut, route.
NETS = {
    "lanes.cfg": """[net]
width=16
height=16
channels=3

[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2
padding=1

[convolutional]
filters=64
size=1
stride=1
activation=relu

[convolutional]
filters=64
size=3
stride=1
padding=1
groups=8
activation=leaky

[convolutional]
filters=64
size=1
stride=1
activation=linear

[shortcut]
from=-3
activation=leaky

[convolutional]
filters=64
size=3
stride=2
padding=1
groups=4
activation=leaky

[route]
layers=-1

[convolutional]
filters=10
size=1
stride=1
activation=linear

[avgpool]

[softmax]
groups=1
""",
    "winograd.cfg": """[net]
width=12
height=12
channels=3

[convolutional]
filters=64
size=1
stride=1
activation=leaky

[convolutional]
filters=64
size=3
stride=1
padding=1
groups=4
activation=relu

[convolutional]
filters=32
size=1
stride=1
activation=leaky

[maxpool]
size=1
stride=1

[route]
layers=-1,-3

[convolutional]
filters=10
size=3
stride=2
padding=1
activation=logistic

[avgpool]

[softmax]
""",
    "dense.cfg": """[net]
width=20
height=20
channels=3

[crop]
crop_width=16
crop_height=16
flip=1

[convolutional]
filters=8
size=3
stride=2
pad=1
activation=leaky

[maxpool]
size=3
stride=2
padding=2

[connected]
output=32
activation=leaky

[dropout]
probability=.5

[connected]
output=10
activation=linear

[softmax]

[cost]
type=sse
""",
}

# A small Caffe net with most of the layer kinds nets/caffe translates (its .caffemodel written
# by the corpus); mutated as text by mutate_prototxt.
CAFFE_NET = """name: "small"
input: "data"
input_dim: 1
input_dim: 3
input_dim: 16
input_dim: 16
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1" lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 } }
layer { name: "a" type: "Convolution" bottom: "norm1" top: "a" convolution_param { num_output: 8 kernel_size: 1 group: 2 } }
layer { name: "b" type: "Convolution" bottom: "norm1" top: "b" convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "sum" eltwise_param { coeff: 1 coeff: 0.5 } }
layer { name: "cat" type: "Concat" bottom: "sum" bottom: "norm1" top: "cat" }
layer { name: "halves" type: "Slice" bottom: "cat" top: "h1" top: "h2" slice_param { slice_point: 4 } }
layer { name: "avg" type: "Pooling" bottom: "h2" top: "avg" pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc" type: "InnerProduct" bottom: "avg" top: "fc" inner_product_param { num_output: 10 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""
CAFFE_WORDS = ["Convolution", "Pooling", "Eltwise", "Fancy", "data", "conv1", "nowhere", "-1", "0", "99999999999", "AVE", "MAX", "PROD", "1.5", '"x"', "{", "}"]

VALUES = [
    "0", "-1", "-7", "1", "2", "3", "4", "8", "16", "33", "1000", "2147483647", "2147483648",
    "9223372036854775808", "10000000000000000000", "1.5", ".5", "-0.5", "nan", "inf", "-inf",
    "1e40", "1e-40", "", "1_0", "+3", "\u0663", "0x10", "abc", "1,2", "-1,-2", "0,0,0",
    "5,-1", "99",
]
SECTIONS = [
    "convolutional", "conv", "maxpool", "avgpool", "route", "shortcut", "connected", "softmax",
    "dropout", "crop", "cost", "yolo", "net", "", "x" * 300,
]
KEYS = ["padding", "pad", "size", "stride", "groups", "filters", "from", "layers", "output", "alpha", "temperature"]
OPTIONS = ["foo=1", "batch=64", "stopbackward=1", "binary=1", "tree=x", "groups=3", "pad=1"]


# ---- the files every case draws on ----------------------------------------------------------


def png_with_size(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def make_images(folder: Path, rng: np.random.Generator) -> list[Path]:
    """Good, odd and broken images."""
    folder.mkdir()
    pixels = (rng.random((30, 40, 3)) * 255).astype(np.uint8)
    picture = Image.fromarray(pixels)
    picture.save(folder / "rgb.png")
    picture.save(folder / "rgb.jpg", quality=90)
    picture.save(folder / "rgb.bmp")
    picture.convert("L").save(folder / "grey.png")
    picture.convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(np.dstack([pixels, pixels[:, :, :1]])).save(folder / "rgba.png")
    Image.fromarray((rng.random((9, 7)) * 65535).astype(np.uint16)).save(folder / "grey16.png")
    frames = [picture, Image.fromarray(255 - pixels)]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:])
    Image.fromarray(pixels[:1, :1]).save(folder / "one.png")
    Image.fromarray(np.repeat(pixels[:1, :2], 1000, axis=0)).save(folder / "tall.png")
    Image.fromarray(np.repeat(pixels[:2, :1], 1000, axis=1)).save(folder / "wide.png")
    (folder / "bomb.png").write_bytes(png_with_size(20000, 20000))
    (folder / "big.png").write_bytes(png_with_size(10000, 9000))
    data = (folder / "rgb.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("not an image\n")
    (folder / "folder.jpg").mkdir()
    gif = bytearray((folder / "animated.gif").read_bytes())
    gif[6:10] = b"\xff\xff\xff\xff"  # screen size
    (folder / "huge-screen.gif").write_bytes(bytes(gif))
    bmp = bytearray((folder / "rgb.bmp").read_bytes())
    bmp[18:26] = struct.pack("<ii", 100000, -100000)
    (folder / "huge.bmp").write_bytes(bytes(bmp))
    return sorted(folder.iterdir())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    rng = np.random.default_rng(SEED)
    for name, text in NETS.items():
        (root / name).write_text(text)
        spec = nets.load_spec(root / name)
        write_weights(root / name.replace(".cfg", ".weights"), spec.layers, random_weights(spec.layers, 1))
    (root / "small.prototxt").write_text(CAFFE_NET)
    model = read_net(root / "small.prototxt")
    write_caffemodel(root / "small.caffemodel", random_blobs(model, 1))
    images = make_images(root / "images", rng)
    labels = Path(DEFAULT_LABELS).read_text().splitlines()[:CLASSES]
    labelled = root / "labelled"
    for i, label in enumerate(labels):
        (labelled / label).mkdir(parents=True)
        source = images[i % len(images)]
        if source.is_file():
            shutil.copy(source, labelled / label / f"{label}_{source.name}")
    return root, images, labels


# ---- mutations ------------------------------------------------------------------------------


def any_value(rnd: random.Random) -> str:
    """Half the time a small integer (near what layers accept), else anything in VALUES."""
    return str(rnd.randint(-3, 5)) if rnd.random() < 0.5 else rnd.choice(VALUES)


def mutate_cfg(text: str, rnd: random.Random) -> bytes:
    lines = text.splitlines()
    for _ in range(rnd.choice([1, 1, 1, 2, 2, 3])):
        choice = rnd.random()
        options = [i for i, line in enumerate(lines) if "=" in line]
        sections = [i for i, line in enumerate(lines) if line.startswith("[")]
        if choice < 0.45 and options:
            i = rnd.choice(options)
            key = lines[i].split("=")[0]
            value = rnd.choice(["linear", "leaky", "swish", ""]) if key == "activation" else any_value(rnd)
            lines[i] = f"{key}={value}"
        elif choice < 0.5 and lines:
            del lines[rnd.randrange(len(lines))]
        elif choice < 0.55 and lines:
            i = rnd.randrange(len(lines))
            lines.insert(i, lines[i] if rnd.random() < 0.5 else rnd.choice(OPTIONS))
        elif choice < 0.75 and sections:  # an option a layer reads, with any value
            i = rnd.choice(sections) + 1
            lines.insert(i, f"{rnd.choice(KEYS)}={any_value(rnd)}")
        elif choice < 0.78 and len(lines) > 1:
            i, j = rnd.randrange(len(lines)), rnd.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
        elif choice < 0.83 and sections:
            lines[rnd.choice(sections[1:] or sections)] = f"[{rnd.choice(SECTIONS)}]"
        elif choice < 0.87:
            lines.insert(rnd.randrange(len(lines) + 1), f"[{rnd.choice(SECTIONS)}]")
        elif choice < 0.9:
            lines.append(rnd.choice(["[route]\nlayers=" + rnd.choice(VALUES), "[shortcut]\nfrom=" + rnd.choice(VALUES)]))
        elif choice < 0.93:
            lines.insert(rnd.randrange(len(lines) + 1), "filters=" + "9" * rnd.choice([30, 3000, 300000]))
        else:
            data = "\n".join(lines).encode()
            cut = rnd.randrange(len(data) + 1)
            tail = rnd.choice([b"", b"\x00\xff\xfe", bytes(rnd.randrange(256) for _ in range(50))])
            return data[:cut] + tail
    return ("\n".join(lines) + "\n").encode()


def mutate_prototxt(text: str, rnd: random.Random) -> bytes:
    """A word, number or line of the prototxt replaced, dropped, repeated or cut off."""
    lines = text.splitlines()
    for _ in range(rnd.choice([1, 1, 2, 3])):
        choice = rnd.random()
        i = rnd.randrange(len(lines))
        if choice < 0.5:
            words = lines[i].split(" ")
            words[rnd.randrange(len(words))] = rnd.choice(CAFFE_WORDS + [str(rnd.randint(-2, 9))])
            lines[i] = " ".join(words)
        elif choice < 0.65:
            del lines[i]
        elif choice < 0.8:
            lines.insert(i, lines[rnd.randrange(len(lines))])
        elif choice < 0.9:
            lines[i], lines[-1] = lines[-1], lines[i]
        else:
            data = "\n".join(lines).encode()
            return data[: rnd.randrange(len(data) + 1)] + rnd.choice([b"", b"\x00\xff", b"layer {"])
    return ("\n".join(lines) + "\n").encode()


def mutate_weights(data: bytes, rnd: random.Random) -> bytes:
    data = bytearray(data)
    choice = rnd.random()
    if choice < 0.2:
        return bytes(data[: rnd.randrange(len(data) + 1)])
    if choice < 0.3:
        return bytes(data) + bytes(rnd.randrange(256) for _ in range(rnd.choice([1, 4, 100])))
    if choice < 0.45:
        field = rnd.choice([0, 4, 8, 12])
        data[field : field + 4] = struct.pack("<i", rnd.choice([0, 1, 2, 1001, -1, 2**31 - 1, 10]))
    elif choice < 0.6:
        at = 20 + 4 * rnd.randrange((len(data) - 20) // 4)
        data[at : at + 4] = struct.pack("<f", rnd.choice([float("nan"), float("inf"), -float("inf"), 3e38, -1.0]))
    elif choice < 0.8:
        for _ in range(rnd.randint(1, 20)):
            data[rnd.randrange(len(data))] = rnd.randrange(256)
    else:
        return b""
    return bytes(data)


def flip_bytes(data: bytes, rnd: random.Random) -> bytes:
    data = bytearray(data)
    for _ in range(rnd.randint(1, 8)):
        data[rnd.randrange(len(data))] = rnd.randrange(256)
    return bytes(data)


# ---- cases ----------------------------------------------------------------------------------


def pick_images(folder: Path, images: list[Path], rnd: random.Random) -> list[str]:
    chosen = []
    for _ in range(rnd.choice([1, 1, 1, 2, 3])):
        image = rnd.choice(images)
        if image.is_file() and image.stat().st_size and rnd.random() < 0.15:  # bytes flipped
            flipped = folder / f"flipped{len(chosen)}{image.suffix}"
            flipped.write_bytes(flip_bytes(image.read_bytes(), rnd))
            image = flipped
        chosen.append(str(image))
    if rnd.random() < 0.05:
        chosen.append("missing.jpg")
    return chosen


def network_files(folder: Path, root: Path, rnd: random.Random, caffe: bool) -> tuple[str, str]:
    """A cfg (or, in a Caffe case, a prototxt) and a weights path: the originals, or mutated copies."""
    if caffe:
        prototxt, caffemodel = root / "small.prototxt", root / "small.caffemodel"
        if rnd.random() < 0.5:
            (folder / "net.prototxt").write_bytes(mutate_prototxt(CAFFE_NET, rnd))
            prototxt = folder / "net.prototxt"
        if rnd.random() < 0.2:
            (folder / "net.caffemodel").write_bytes(mutate_weights(caffemodel.read_bytes(), rnd))
            caffemodel = folder / "net.caffemodel"
        return str(prototxt), str(caffemodel)
    name = rnd.choice(sorted(NETS))
    cfg, weights = root / name, root / name.replace(".cfg", ".weights")
    if rnd.random() < 0.5:
        (folder / "net.cfg").write_bytes(mutate_cfg(NETS[name], rnd))
        cfg = folder / "net.cfg"
    if rnd.random() < 0.15:
        (folder / "net.weights").write_bytes(mutate_weights(weights.read_bytes(), rnd))
        weights = folder / "net.weights"
    roll = rnd.random()
    if roll < 0.02:
        return "/dev/zero", str(weights)
    if roll < 0.04:
        return str(cfg), str(folder)  # a directory as weights
    return str(cfg), str(weights)


def option_value(rnd: random.Random, good: list, bad: list):
    """Mostly a good value, so that cases reach the kernels; sometimes a bad one."""
    return rnd.choice(good if rnd.random() < 0.8 else bad)


def predict_case(folder: Path, root: Path, images: list[Path], rnd: random.Random, caffe: bool) -> dict:
    cfg, weights = network_files(folder, root, rnd, caffe)
    argv = [cfg]
    if rnd.random() < 0.5:
        argv.append(weights)
    else:
        argv += ["--random-weights", str(option_value(rnd, [0, 1, 7], [-1, 2**70, "x"]))]
    argv += pick_images(folder, images, rnd)
    options = [["--quiet"]] if rnd.random() < 0.9 else []
    for option, good, bad in (
        ("--top", [1, 5, 2000], [0, -1, "abc"]), ("--threads", [1, 2], [0, -1, 999, "x"]),
        ("--backend", ["cpu", "ref"], ["cuda", "gpu"]),
        ("--preprocess", ["letterbox", "crop", "resize"], ["foo"]),
    ):
        if rnd.random() < 0.2:
            options.append([option, str(option_value(rnd, good, bad))])
    if rnd.random() < 0.1:
        data = folder / "names.data"
        line = rnd.choice(["top=abc", "top=-1", "top=0", "top=3", "names=missing.list", "nonsense", "top=99999999999"])
        data.write_text(f"names = {REPO / 'data' / 'imagenet.shortnames.list'}\n{line}\n")
        options.append(["--data", str(data)])
    if rnd.random() < 0.03:
        options.append([rnd.choice(["--version", "--list", "--foo", "--help"])])
    for option in options:  # options anywhere among the paths
        at = rnd.randrange(len(argv) + 1)
        argv[at:at] = option
    stdin = None
    if len([a for a in argv if not a.startswith("-")]) < 3 and rnd.random() < 0.5:
        (folder / "stdin.txt").write_text("\n".join(pick_images(folder, images, rnd)) + "\n")
        stdin = str(folder / "stdin.txt")
    return {"tool": "predict", "argv": argv, "stdin": stdin}


def valid_case(folder: Path, root: Path, images: list[Path], rnd: random.Random, caffe: bool) -> dict:
    cfg, weights = network_files(folder, root, rnd, caffe)
    labelled = sorted(str(p) for p in (root / "labelled").rglob("*") if p.is_file())
    roll = rnd.random()
    if roll < 0.5:
        source = str(root / "labelled")
    elif roll < 0.8:
        lines = [rnd.choice(labelled + [str(p) for p in images] + ["n01440764_missing.jpg"]) for _ in range(rnd.randint(1, 12))]
        (folder / "images.list").write_text("\n".join(lines) + "\n")
        source = str(folder / "images.list")
    elif roll < 0.9:
        (folder / "images.list").write_text("\n".join(labelled) + "\n")
        (folder / "v.data").write_text(rnd.choice([f"valid={folder / 'images.list'}\n", "classes=10\n", "valid=nope.list\n"]))
        source = str(folder / "v.data")
    else:
        source = rnd.choice([str(folder), "nope", str(root / "images")])
    argv = [cfg, weights if rnd.random() < 0.6 else "random", source, "--workers", rnd.choice(["0", "0", "0", "1"])]
    for option, good, bad in (
        ("--batch", [1, 3, 8], [0, -3]), ("--limit", [1, 4], [0, -5]), ("--crops", [1, 10], [3]),
        ("--top", [1, 5], [0]), ("--preprocess", ["crop", "letterbox", "resize"], ["x"]),
        ("--json", [folder / "r.json"], [folder, "/no/such/folder/r.json"]),
    ):
        if rnd.random() < 0.3:
            argv += [option, str(option_value(rnd, good, bad))]
    return {"tool": "valid", "argv": argv, "stdin": None}


# Informational lines: progress, and the notices of nets.cli that end in "..." (a slow first pass).
INFO = re.compile(r"(Loading weights from|Random weights|interrupted|.*: Predicted in|.*\.\.\.$)")
TABLE = re.compile(r"(layer +filters|\s*\d+ \w|Total BFLOPs)")
PROGRESS = re.compile(r".*(\d+%\|.*img|\d+img \[)")  # tqdm's bar
ERROR = re.compile(r"(error: |python -m nets\.\w+: )")
PERCENT = re.compile(r"(\S+)%")


def verdict(case: dict, result: dict, folder: Path) -> str | None:
    """None if the case ended as it must, else what went wrong."""
    if result.get("hang"):
        return f"hung (killed after {case['timeout']:.0f} s)"
    status = result["status"]
    if status < 0:
        return f"killed by signal {-status}"
    stdout = (folder / "stdout").read_text(errors="replace")
    stderr = (folder / "stderr").read_text(errors="replace")
    if "Traceback" in stderr or "Warning" in stderr:
        return f"traceback or warning on stderr: {stderr[-2000:]}"
    if status not in (0, 2):
        return f"exit status {status}: {stderr[-2000:]}"
    lines = [line.split("\r")[-1] for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if ERROR.match(line)]
    stray = [line for line in lines if not any(p.match(line) for p in (ERROR, INFO, TABLE, PROGRESS))]
    if stray:
        return f"other lines on stderr: {stray[:3]}"
    if status == 2 and (not errors or any(len(line) > 1200 for line in errors)):
        return f"exit 2 without a one-line error: {stderr[-2000:]}"
    if case["tool"] == "valid" and len(errors) > 1:
        return f"{len(errors)} error lines: {stderr[-2000:]}"
    for value in PERCENT.findall(stdout):
        if not re.fullmatch(r"-?\d+\.\d\d", value):  # finite (a cfg without softmax: negative)
            return f"a non-finite or odd percentage {value!r}: {stdout[-500:]}"
    return None


def fuzz(corpus, tmp_path: Path, cases: int, seed: int, plant: str | None = None, timeout: float = TIMEOUT):
    """Run `cases` cases through one fork server; (failures, outcomes). With a planted bug,
    stop at the first failure."""
    root, images, _ = corpus
    keep = os.environ.get("KERN_FUZZ_KEEP")
    log = open(os.environ["KERN_FUZZ_LOG"], "w") if os.environ.get("KERN_FUZZ_LOG") and not plant else None
    server = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "fuzz_server.py"), *(["--plant", plant] if plant else [])],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO,
    )
    failures, outcomes = [], Counter()
    try:
        # `cases` Darknet cases, and after every fourth a Caffe case of its own seed (so that the
        # Darknet cases, and the planted bugs they find, stay what they were before Caffe's).
        numbers = [(f"{n}", False) for n in range(cases)]
        numbers = [item for n, item in enumerate(numbers) for item in [item] + ([(f"{n}c", True)] if n % 4 == 3 else [])]
        for number, caffe in numbers:
            rnd = random.Random(f"{seed}:{number}" if not caffe else f"{seed}:{number}:caffe")
            folder = tmp_path / f"case{number}"
            folder.mkdir()
            make = predict_case if rnd.random() < 0.7 else valid_case
            case = make(folder, root, images, rnd, caffe) | {"cwd": str(folder), "timeout": timeout}
            server.stdin.write(json.dumps(case) + "\n")
            server.stdin.flush()
            result = json.loads(server.stdout.readline())
            problem = verdict(case, result, folder)
            outcomes[(case["tool"], result.get("status"))] += 1
            if log:
                stderr = (folder / "stderr").read_text(errors="replace").strip().splitlines()[-1:]
                log.write(f"{number}\t{case['tool']}\t{result.get('status')}\t{stderr}\n")
            if problem:
                failures.append(f"case {number} ({case['tool']} {case['argv']}): {problem}")
                if keep:
                    shutil.copytree(folder, Path(keep) / f"case{number}", dirs_exist_ok=True)
            shutil.rmtree(folder, ignore_errors=True)
            if plant and failures:
                break
    finally:
        server.stdin.close()
        server.wait(timeout=60)
        if log:
            log.close()
    return failures, outcomes


def test_fuzz_predict_and_valid(corpus, tmp_path):
    failures, outcomes = fuzz(corpus, tmp_path, CASES, SEED)
    print(f"\nfuzz: {CASES} cases from seed {SEED}: " + ", ".join(
        f"{tool} exit {status}: {count}" for (tool, status), count in sorted(outcomes.items(), key=str)
    ))
    assert not failures, f"{len(failures)} of {CASES} cases failed:\n" + "\n".join(failures[:20])


@pytest.mark.parametrize("plant,expected", [
    ("letterbox-sliver", "traceback"),
    ("decoder-errors", "traceback"),
    ("negative-padding", "traceback|signal"),
    ("hang", "hung"),
    ("warning", "warning"),
    ("nan-output", "non-finite"),
    ("two-line-error", "other lines|error lines"),
])
def test_fuzz_catches_planted_bugs(corpus, tmp_path, plant, expected):
    # Short cases for the planted hang; the others keep the full limit, so that a legitimately
    # slow case (the ref backend on a grown network) is not taken for the planted bug.
    failures, _ = fuzz(corpus, tmp_path, 400, seed=SEED, plant=plant, timeout=8 if plant == "hang" else TIMEOUT)
    assert failures, f"the planted bug {plant} went unnoticed in 400 cases"
    assert re.search(expected, failures[0]), failures[0]
