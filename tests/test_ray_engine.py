"""nets.valid --engine ray on a local Ray (2 CPUs): image by image what the local engine gives,
with an actor killed mid-run, Ctrl-C, a bad address and a missing token. Skipped where ray is
not installed (pip install 'kern-nn[ray]')."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'kern-nn[ray]')")

from nets import ray_engine  # noqa: E402
from tests.conftest import default_sigint  # noqa: E402

# One process runs them all (pytest -n 2): a cluster of one test would show in another's check
# that no Ray process is left.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]
REPO = Path(__file__).resolve().parent.parent
# The six shipped photos under ImageNet-style names (synset first, as Darknet matches labels).
SYNSETS = ["n02110063", "n01608432", "n01440764", "n02389026", "n04254680", "n03000134"]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """30 labelled images (the shipped photos, five times each) and one that cannot be read."""
    folder = tmp_path_factory.mktemp("images")
    photos = sorted((REPO / "data").glob("*.jpg"))
    for copy in range(5):
        for synset, photo in zip(SYNSETS, photos):
            shutil.copy(photo, folder / f"{synset}_{copy}_{photo.stem}.jpg")
    (folder / "n02110063_9_broken.jpg").write_text("not a JPEG")
    return folder


def valid(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """python -m nets.valid ARGS; env's names set (None: removed)."""
    merged = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "nets.valid", *args], capture_output=True, text=True, cwd=REPO,
        env={name: value for name, value in merged.items() if value is not None}, timeout=timeout,
    )


def test_ray_gives_what_the_local_engine_gives(images, tmp_path):
    """Two actors over 31 images in batches of 4: the same records, in the same order, the same
    unreadable image, and an embedded cluster that is gone afterwards."""
    before = ray_daemons()
    local, remote = tmp_path / "local.json", tmp_path / "ray.json"
    done = valid("tiny", "tiny", str(images), "--batch", "4", "--json", str(local))
    assert done.returncode == 0, done.stderr
    done = valid("tiny", "tiny", str(images), "--batch", "4", "--json", str(remote), "--engine", "ray",
                 "--actors", "2")
    assert done.returncode == 0, done.stderr
    a, b = json.loads(local.read_text()), json.loads(remote.read_text())
    assert len(a["images"]) == 30 and a["images"] == b["images"]
    assert a["unreadable"] == b["unreadable"] and len(b["unreadable"]) == 1
    assert (a["top1"], a["top5"]) == (b["top1"], b["top5"])
    assert "Traceback" not in done.stderr
    assert not ray_processes(before)


def ray_daemons() -> set[str]:
    """Ray's own daemons running on this machine, as "pid args" lines; not those on their way
    out (killed, SIGKILL pending, or zombies)."""
    listed = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout.splitlines()
    return {line.strip() for line in listed
            if ("raylet" in line or "gcs_server" in line) and not killed(line.split()[0])}


def killed(pid: str) -> bool:
    """Whether the process has exited (a zombie) or has SIGKILL pending (it ends as soon as
    the system call it is in returns)."""
    try:
        status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    except (OSError, ValueError):
        return True  # gone already
    sigkill = 1 << (signal.SIGKILL - 1)
    pending = int(status.get("SigPnd", "0"), 16) | int(status.get("ShdPnd", "0"), 16)
    return status.get("State", "").strip().startswith("Z") or bool(pending & sigkill)


def ray_processes(before: set[str], grace: float = 60.0) -> list[str]:
    """Ray daemons started since `before` and still running `grace` seconds after the run (an
    embedded cluster must stop with its run: nets.valid waits for them; in a fresh-clone CI run
    on a loaded machine a raylet that had logged nothing since the driver left was still there
    10 s later, and gone minutes later). Daemons running before, as another test's cluster, do
    not count."""
    deadline = time.monotonic() + grace
    while True:
        left = sorted(ray_daemons() - before)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def test_ctrl_c_prints_the_summary_so_far_and_stops_the_cluster(images):
    before = ray_daemons()
    folder = images.parent / "many"
    folder.mkdir(exist_ok=True)
    for i in range(40):  # enough that the run is still going when it is interrupted
        for photo in images.glob("*_0_*.jpg"):
            shutil.copy(photo, folder / f"{i}_{photo.name}")
    process = subprocess.Popen(
        [sys.executable, "-m", "nets.valid", "tiny", "tiny", str(folder), "--engine", "ray", "--batch", "2"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint,
    )
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.extend(iter(lambda: process.stderr.read(1), "")), daemon=True)
    reader.start()
    started = time.monotonic()
    while time.monotonic() - started < 120 and "top-1" not in "".join(err) and process.poll() is None:
        time.sleep(0.5)  # interrupted once the first results are in
    process.send_signal(signal.SIGINT)
    out = process.stdout.read()
    process.wait(timeout=120)
    reader.join(timeout=10)
    assert process.returncode == 130, "".join(err)[-2000:]
    assert "interrupted: the summary so far" in "".join(err) and "top-1" in out
    assert "Traceback" not in "".join(err)
    assert not ray_processes(before)


@pytest.mark.parametrize(
    "args,env,says",
    [
        (["--address", "127.0.0.1:1"], {}, "cannot reach a Ray cluster at 127.0.0.1:1"),
        (["--actors", "3"], {}, "--actors 3 x --threads-per-actor 1 need 3 CPUs"),
        (["--actors", "2,1"], {}, "--actors 2,1: expected N or MIN,MAX"),
        (["--gpus-per-actor", "1"], {}, "--gpus-per-actor 1.0: expected --backend cuda"),
    ],
)
def test_bad_settings_are_one_line(images, args, env, says):
    done = valid("tiny", "tiny", str(images), "--engine", "ray", *args, env=env, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: {says}")


def test_a_local_cluster_that_does_not_start_is_one_line_after_a_retry(monkeypatch):
    calls = []

    def timing_out(**options):
        calls.append(options)
        raise Exception("The current node timed out during startup. This could happen because ...")  # noqa: TRY002

    monkeypatch.setattr(ray, "init", timing_out)
    with pytest.raises(ray_engine.KernError, match=r"^could not start a local Ray cluster \(2 tries\): The current "
                                                   r"node timed out during startup\. This could happen"):
        ray_engine.connect(None)
    assert len(calls) == 2


@pytest.fixture
def token_cluster():
    """A Ray head that asks for a token (RAY_AUTH_MODE=token), started and stopped here."""
    token = "0123456789abcdef0123456789abcdef"
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    port = "6391"
    started = subprocess.run(
        ["ray", "start", "--head", "--port", port, "--num-cpus", "1", "--include-dashboard=false",
         "--disable-usage-stats"], capture_output=True, text=True, env=env, timeout=120,
    )
    if started.returncode != 0:
        pytest.skip(f"could not start a Ray head with a token: {started.stderr.strip()[-300:]}")
    yield f"127.0.0.1:{port}", token
    subprocess.run(["ray", "stop", "--force"], capture_output=True, env=env, timeout=120)


def test_a_missing_or_wrong_token_is_one_line(images, token_cluster):
    address, token = token_cluster
    clean = {"RAY_AUTH_TOKEN": None, "RAY_AUTH_TOKEN_PATH": None, "RAY_AUTH_MODE": None, "RAY_ADDRESS": None}
    missing = valid("tiny", "tiny", str(images), "--engine", "ray", "--address", address, env=clean, timeout=180)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert missing.stderr.strip().splitlines()[-1] == (
        f"error: Ray cluster {address} asks for a token: none is set (RAY_AUTH_TOKEN, or RAY_AUTH_TOKEN_PATH "
        "naming a file that holds it)"
    )
    wrong = valid("tiny", "tiny", str(images), "--engine", "ray", "--address", address,
                  env={**clean, "RAY_AUTH_TOKEN": "f" * 32}, timeout=180)
    assert wrong.returncode == 2
    assert wrong.stderr.strip().splitlines()[-1].endswith("the one in RAY_AUTH_TOKEN was refused")
    right = valid("tiny", "tiny", str(images), "--engine", "ray", "--address", address, "--limit", "6",
                  env={**clean, "RAY_AUTH_TOKEN": token}, timeout=300)
    assert right.returncode == 0, right.stderr[-2000:]
    assert "top-1" in right.stdout


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown(wait_for_processes=True)


def test_an_actor_killed_mid_run_is_restarted_and_every_image_comes_once(images, local_ray, tmp_path):
    """The first actor to run its second batch dies (os._exit, as a SIGKILL would leave it):
    Ray Data restarts it and runs that batch again; every image's result comes once, in
    order, equal to a run where nothing died."""
    paths = sorted(str(p) for p in images.iterdir())
    job = ray_engine.Job("tiny", str(REPO / "weights" / "tiny.weights"), None, "cpu", 1, "crop", 1, 5)
    cluster = ray_engine.Cluster(None, (1, 1), 0)
    marker = tmp_path / "died"

    class DiesOnce(ray_engine.Classifier):
        calls = 0

        def __call__(self, rows):
            self.calls += 1
            if self.calls == 2 and not marker.exists():
                marker.write_text("died")
                os._exit(1)
            return super().__call__(rows)

    calm = list(ray_engine.classify(paths, job, cluster, batch=4))
    dying = list(ray_engine.classify(paths, job, cluster, batch=4, actor=DiesOnce))
    assert marker.exists(), "the actor never died: the test proved nothing"
    assert [r.index for r in dying] == list(range(len(paths)))
    assert dying == calm
    assert sum(r.ranked is None for r in dying) == 1

