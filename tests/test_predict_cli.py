"""python -m nets.predict end to end: real Tiny Darknet predictions, the prompt loop,
--download from a local HTTP server, and every bad input failing with one line and exit 2."""

import functools
import http.server
import json
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest

import nets
from nets.weights import random_weights, write_weights

REPO = Path(__file__).resolve().parent.parent

# Darknet's own `classifier predict` output for tiny.weights (Debian's darknet, same cfg and image).
DARKNET_TOP5 = {
    "dog.jpg": [
        (14.51, "malamute"), (6.09, "Newfoundland"), (5.59, "dogsled"),
        (4.55, "standard schnauzer"), (4.05, "Eskimo dog"),
    ],
    "eagle.jpg": [
        (54.11, "bald eagle"), (12.01, "ruddy turnstone"), (11.61, "kite"), (8.80, "hen"),
        (4.15, "vulture"),
    ],
}


def predict(*args, stdin="", env=None, cwd=REPO):
    return subprocess.run(
        [sys.executable, "-m", "nets.predict", *map(str, args)], input=stdin, capture_output=True,
        text=True, cwd=cwd, timeout=300, env=env,
    )


def top5(stdout):
    lines = [line.replace("Enter Image Path: ", "") for line in stdout.splitlines() if "%: " in line]
    return [(float(line.split("%:")[0]), line.split("%: ", 1)[1]) for line in lines]


def test_no_arguments_predicts_dog_like_darknet():
    result = predict()
    assert result.returncode == 0, result.stderr
    assert "Predicted in" in result.stderr and "Total BFLOPs" in result.stderr
    got = top5(result.stdout)
    expected = DARKNET_TOP5["dog.jpg"]
    assert [name for _, name in got] == [name for _, name in expected]
    for (p, _), (q, _) in zip(got, expected):
        assert abs(p - q) <= 0.5  # Pillow's JPEG decoder differs slightly from stb_image's


def test_several_images_in_one_call_match_darknet():
    result = predict("cfg/tiny.cfg", "weights/tiny.weights", "data/eagle.jpg", "data/dog.jpg", "--quiet")
    assert result.returncode == 0, result.stderr
    got = top5(result.stdout)
    expected = DARKNET_TOP5["eagle.jpg"] + DARKNET_TOP5["dog.jpg"]
    assert [name for _, name in got] == [name for _, name in expected]
    assert all(abs(p - q) <= 0.5 for (p, _), (q, _) in zip(got, expected))
    assert result.stdout.splitlines()[0] == "%5.2f%%: bald eagle" % got[0][0]


def test_prompt_loop_ends_cleanly_on_eof():
    result = predict("cfg/tiny.cfg", "--quiet", "--top", "2", stdin="data/dog.jpg\nnope.jpg\ndata/eagle.jpg\n")
    assert result.returncode == 0, result.stderr
    # Paths piped in (stdin not a terminal): the prompt goes to stderr, stdout holds results only.
    assert result.stderr.count("Enter Image Path:") == 4 and "Enter" not in result.stdout
    assert [name for _, name in top5(result.stdout)] == ["malamute", "Newfoundland", "bald eagle", "ruddy turnstone"]
    assert "nope.jpg: no such image file" in result.stderr


def test_json_and_quiet_for_scripts():
    result = predict("cfg/tiny.cfg", "data/dog.jpg", "data/eagle.jpg", "--top", "2", "--json", "--quiet")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["path"] for r in records] == ["data/dog.jpg", "data/eagle.jpg"]
    assert [c["label"] for c in records[0]["top"]] == ["malamute", "Newfoundland"]
    assert abs(records[1]["top"][0]["probability"] - 0.537) < 0.01 and records[1]["seconds"] > 0


def test_options_before_images_and_one_missing_image_among_several():
    result = predict("cfg/tiny.cfg", "--top", "1", "data/dog.jpg", "missing.jpg", "--quiet", "data/eagle.jpg")
    assert result.returncode == 2
    assert [name for _, name in top5(result.stdout)] == ["malamute", "bald eagle"]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: missing.jpg: no such image file"]
    assert result.stderr.splitlines() == errors  # --quiet: the error alone


def test_duplicate_keys_keep_the_first_as_darknet(tmp_path):
    spec = nets.load_spec(bad_cfg(tmp_path, NET + "[convolutional]\nsize=1\nsize=3\nfilters=4\nfilters=8\n"))
    assert (spec.layers[0].size, spec.layers[0].filters) == (1, 4)
    spec = nets.load_spec(bad_cfg(tmp_path, NET + "[convolutional]\nfilters=+3\n"))
    assert spec.layers[0].filters == 3  # atoi reads a leading +


def test_random_weights_say_so_on_every_output():
    result = predict("cfg/darknet.cfg", "data/dog.jpg", "data/eagle.jpg", "--random-weights", "3", "--quiet", "--threads", "1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("random weights, seed 3") == 2


def test_missing_weights_say_where_to_get_them(tmp_path):
    cfg = tmp_path / "darknet19.cfg"
    cfg.write_text((REPO / "cfg" / "darknet19.cfg").read_text())
    result = predict(cfg, "data/dog.jpg", "--quiet", env={"XDG_CACHE_HOME": str(tmp_path / "cache"), "PATH": ""})
    assert result.returncode == 2
    assert "https://data.pjreddie.com/files/darknet19.weights" in result.stderr
    assert "--download" in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.fixture
def weights_server(tmp_path):
    """A local HTTP server on 127.0.0.1 serving random tiny.weights and a wrong-size file."""
    served = tmp_path / "served"
    served.mkdir()
    spec = nets.load_spec(REPO / "cfg" / "tiny.cfg")
    write_weights(served / "mini.weights", spec.layers, random_weights(spec.layers, seed=4))
    (served / "short.weights").write_bytes((served / "mini.weights").read_bytes()[:1000])
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", served
    server.shutdown()


def test_download_fetches_into_the_cache(tmp_path, weights_server):
    url, served = weights_server
    cfg = tmp_path / "mini.cfg"  # not "tiny": the repo's own weights/tiny.weights would be found
    cfg.write_text((REPO / "cfg" / "tiny.cfg").read_text())
    cache = tmp_path / "cache"
    env = {"XDG_CACHE_HOME": str(cache), "PATH": ""}
    result = predict(cfg, "data/dog.jpg", "--quiet", "--download", "--weights-url", f"{url}/mini.weights", env=env)
    assert result.returncode == 0, result.stderr
    assert (cache / "kern" / "mini.weights").read_bytes() == (served / "mini.weights").read_bytes()
    assert "100.0%" in result.stderr
    again = predict(cfg, "data/dog.jpg", "--quiet", env=env)  # found in the cache now
    assert again.returncode == 0 and again.stdout == result.stdout


def test_download_of_the_wrong_size_fails(tmp_path, weights_server):
    url, _ = weights_server
    cfg = tmp_path / "mini.cfg"
    cfg.write_text((REPO / "cfg" / "tiny.cfg").read_text())
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "PATH": ""}
    result = predict(cfg, "data/dog.jpg", "--quiet", "--download", "--weights-url", f"{url}/short.weights", env=env)
    assert result.returncode == 2 and "1000 bytes, but the cfg needs" in result.stderr
    assert not list((tmp_path / "cache" / "kern").glob("*.weights"))


def bad_cfg(tmp_path, text):
    path = tmp_path / "bad.cfg"
    path.write_text(text)
    return path


def long_weights(tmp_path):
    path = tmp_path / "long.weights"
    path.write_bytes((REPO / "weights" / "tiny.weights").read_bytes() + bytes(12))
    return path


def nan_weights(tmp_path):
    path = tmp_path / "nan.weights"
    data = bytearray((REPO / "weights" / "tiny.weights").read_bytes())
    data[16 + 4 * 65 : 16 + 4 * 66] = struct.pack("<f", float("nan"))  # after 4 x 16 batchnorm values
    path.write_bytes(data)
    return path


def huge_weights(tmp_path):
    """Finite weights whose products overflow float32 (NumPy warned on each op of the ref backend)."""
    path = tmp_path / "huge.weights"
    data = np.frombuffer((REPO / "weights" / "tiny.weights").read_bytes()[16:], dtype="<f4") * np.float32(1e30)
    path.write_bytes((REPO / "weights" / "tiny.weights").read_bytes()[:16] + data.astype("<f4").tobytes())
    return path


def data_file(tmp_path, line):
    path = tmp_path / "bad.data"
    path.write_text(f"names = data/imagenet.shortnames.list\n{line}\n")
    return path


def bomb_png(tmp_path):
    """69 bytes that claim 20000 x 20000 pixels."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path = tmp_path / "bomb.png"
    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


NET = "[net]\nwidth=16\nheight=16\nchannels=3\n"


@pytest.mark.parametrize(
    "make_args,expected",
    [
        (lambda t: ["missing.cfg", "data/dog.jpg"], "cannot read cfg missing.cfg"),
        (lambda t: ["cfg/tiny.cfg", "missing.weights", "data/dog.jpg"], "cannot read weights missing.weights"),
        (lambda t: ["cfg/tiny.cfg", "weights/tiny.weights", "missing.jpg"], "missing.jpg: no such image file"),
        (lambda t: ["cfg/tiny.cfg", "weights/tiny.weights", "cfg/tiny.cfg"], "cfg/tiny.cfg: cannot read image"),
        (lambda t: [bad_cfg(t, NET + "[convolutional]\nfilters 3\n"), "x.jpg"], "bad.cfg:6: expected key=value, got 'filters 3'"),
        (lambda t: [bad_cfg(t, NET + "[yolo]\n"), "x.jpg"], "bad.cfg:5: unknown layer type [yolo]"),
        (lambda t: [bad_cfg(t, NET + "[convolutional]\nactivation=swish\n"), "x.jpg"], "bad.cfg:6: [convolutional] activation=swish: expected one of linear"),
        (lambda t: [bad_cfg(t, NET + "[convolutional]\nfilterz=3\n"), "x.jpg"], "bad.cfg:6: [convolutional] unknown option 'filterz'"),
        (lambda t: [bad_cfg(t, NET + "[convolutional]\nfilters=x\n"), "x.jpg"], "filters=x: expected an integer"),
        (lambda t: [bad_cfg(t, NET + "[convolutional]\nfilters=4\n[maxpool]\nsize=2\nstride=2\n[route]\nlayers=0,1\n"), "x.jpg"], "cannot concatenate layer 0 (16x16) with layer 1 (8x8)"),
        (lambda t: [bad_cfg(t, NET + "[shortcut]\nfrom=-3\n"), "x.jpg"], "from: layer -3 is not an earlier layer"),
        (lambda t: [bad_cfg(t, NET + "[convolutional]\nfilters=4\ngroups=2\n"), "x.jpg"], "groups=2 must divide both the input channels (3)"),
        (lambda t: [bad_cfg(t, NET + "[convolutional]\nsize=32\n"), "x.jpg"], "output would be empty"),
        (lambda t: [bad_cfg(t, "width=3\n"), "x.jpg"], "option 'width' before the first [section]"),
        (lambda t: ["cfg/tiny.cfg", long_weights(t), "data/dog.jpg"], "12 bytes left over after the last layer"),
        (lambda t: ["cfg/darknet19.cfg", "weights/tiny.weights", "data/dog.jpg"], "the file ends in layer 12 (conv)"),
        (lambda t: ["--backend", "gpu"], "argument --backend: invalid choice"),
        (lambda t: ["--threads", "999"], "--threads 999: expected 1.."),
        (lambda t: [bad_cfg(t, NET + "[convolutional]\nfilters=8\npadding=-1\n"), "x.jpg"], "padding=-1: expected 0 or more"),
        (lambda t: [bad_cfg(t, NET + "[maxpool]\nsize=2\npadding=-3\n"), "x.jpg"], "padding=-3: expected 0 or more"),
        (lambda t: [bad_cfg(t, NET + "[maxpool]\nstride=10000000000000000000\n"), "x.jpg"], "stride=10000000000000000000: expected an integer (below 2^31)"),
        (lambda t: [bad_cfg(t, NET + "[convolutional]\nfilters=1_0\n"), "x.jpg"], "filters=1_0: expected an integer"),
        (lambda t: [bad_cfg(t, NET + "[convolutional]\nfilters=\u0663\n"), "x.jpg"], "expected an integer"),
        (lambda t: [bad_cfg(t, NET + "[convolutional]\nfilters=3\n[shortcut]\nfrom=-1\nalpha=inf\n"), "x.jpg"], "alpha=inf: expected a finite decimal number"),
        (lambda t: [bad_cfg(t, NET + "[convolutional]\nfilters=x" + "y" * 100000 + "\n"), "x.jpg"], "... (100001 characters)"),
        (lambda t: ["cfg/tiny.cfg", nan_weights(t), "data/dog.jpg"], "layer 0 (conv): its weights hold NaN or infinite values"),
        (lambda t: ["cfg/tiny.cfg", huge_weights(t), "data/dog.jpg", "--backend", "ref"], "output is not finite (NaN or inf)"),
        (lambda t: ["cfg/tiny.cfg", "data/dog.jpg", "--data", data_file(t, "top=abc")], "top=abc: expected a positive integer"),
        (lambda t: ["cfg/tiny.cfg", "data/dog.jpg", "--data", data_file(t, "top=-1")], "top=-1: expected a positive integer"),
        (lambda t: ["cfg/tiny.cfg", "--random-weights", "-1"], "--random-weights -1: expected a seed"),
        (lambda t: ["/dev/zero"], "cannot read cfg /dev/zero: not a regular file"),
        (lambda t: ["cfg/tiny.cfg", "weights/tiny.weights", str(t)], "a folder with no images in it"),
        (lambda t: ["cfg/tiny.cfg", "weights/tiny.weights", bomb_png(t)], "pixels kern decodes"),
        (lambda t: [bad_cfg(t, "[net]\nwidth=224\nheight=224\nchannels=3\n[connected]\noutput=1000000\n[connected]\noutput=10\n"), "--random-weights"], "GB for its weights"),
    ],
    ids=[
        "missing-cfg", "missing-weights", "missing-image", "not-an-image", "not-key-value",
        "unknown-section", "unknown-activation", "unknown-option", "not-an-integer",
        "route-sizes", "shortcut-from", "groups", "too-small", "option-before-section",
        "weights-too-long", "weights-too-short", "unknown-backend", "too-many-threads",
        "negative-conv-padding", "negative-pool-padding", "integer-over-2^63", "underscore-digits",
        "non-ascii-digit", "infinite-option", "long-line-shortened", "nan-weights", "overflow-on-ref", "data-top-abc",
        "data-top-negative", "negative-seed", "cfg-dev-zero", "empty-folder", "size-bomb",
        "absurd-size",
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, make_args, expected):
    result = predict(*make_args(tmp_path), "--quiet")
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if not line.startswith("Loading weights")]
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert "Traceback" not in result.stderr


def test_cuda_backend_without_a_gpu_is_one_line():
    try:
        import cupy  # noqa: F401

        if cupy.cuda.runtime.getDeviceCount() > 0:
            pytest.skip("a GPU is present")
    except Exception:
        pass
    result = predict("--backend", "cuda", "--quiet")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if not line.startswith("Loading weights")]
    assert len(lines) == 1 and "backend 'cuda' is not available" in lines[0], result.stderr


def test_a_closed_output_pipe_ends_quietly():
    # `python -m nets.predict ... | head -n 1`: no BrokenPipeError traceback (found by .ci/wheel).
    images = ["data/dog.jpg"] * 40
    process = subprocess.Popen(
        [sys.executable, "-m", "nets.predict", "cfg/tiny.cfg", *images, "--quiet"], cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert "malamute" in process.stdout.readline()
    process.stdout.close()
    stderr = process.stderr.read()
    assert process.wait(timeout=300) == 141 and "Traceback" not in stderr


def test_names_as_people_spell_them_and_a_suggestion():
    result = predict("Tiny", "data/dog.jpg", "--top", "1", "--quiet")
    assert result.returncode == 0 and "malamute" in result.stdout, result.stderr
    wrong = predict("darkent19", "data/dog.jpg", "--quiet")
    assert wrong.returncode == 2 and "did you mean darknet19" in wrong.stderr


def test_darknets_argument_order_points_to_data():
    result = predict("cfg/imagenet1k.data", "tiny", "data/dog.jpg")
    assert result.returncode == 2 and "a Darknet .data file where a cfg was expected" in result.stderr
    assert "--data" in result.stderr and "Traceback" not in result.stderr


def test_a_folder_a_url_and_a_quoted_path():
    folder = predict("cfg/tiny.cfg", "data", "--top", "1", "--quiet")
    assert folder.returncode == 0 and len(folder.stdout.splitlines()) == len(list((REPO / "data").glob("*.jpg")))
    url = predict("cfg/tiny.cfg", "https://example.org/dog.jpg", "--quiet")
    assert url.returncode == 2 and "fetches no URLs" in url.stderr
    quoted = predict("cfg/tiny.cfg", "--top", "1", "--quiet", stdin="'data/dog.jpg'\n")
    assert quoted.returncode == 0 and "malamute" in quoted.stdout, quoted.stderr
