"""python -m nets.predict end to end: real Tiny Darknet predictions, the prompt loop,
--download from a local HTTP server, and every bad input failing with one line and exit 2."""

import functools
import http.server
import subprocess
import sys
import threading
from pathlib import Path

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
    assert result.stdout.count("Enter Image Path:") == 4
    assert [name for _, name in top5(result.stdout)] == ["malamute", "Newfoundland", "bald eagle", "ruddy turnstone"]
    assert "nope.jpg: no such image file" in result.stderr


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
    ],
    ids=[
        "missing-cfg", "missing-weights", "missing-image", "not-an-image", "not-key-value",
        "unknown-section", "unknown-activation", "unknown-option", "not-an-integer",
        "route-sizes", "shortcut-from", "groups", "too-small", "option-before-section",
        "weights-too-long", "weights-too-short", "unknown-backend", "too-many-threads",
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
