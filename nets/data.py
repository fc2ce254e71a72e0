"""The files kern ships (cfgs, label lists, sample images, Tiny Darknet's weights), Darknet .data
files (key = value) and label lists.

In a checkout the shipped files are the repository's `cfg/`, `data/` and `weights/`; an
installed wheel carries the same folders as `nets/shipped/`. Paths named inside .data files
resolve like Darknet's (relative to the working directory), then among the shipped files.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from kern.errors import KernError
from nets.files import MB, quote, read_text


def _shipped_root() -> Path:
    installed = Path(__file__).resolve().parent / "shipped"
    return installed if installed.is_dir() else Path(__file__).resolve().parent.parent


SHIPPED = _shipped_root()
CFG_DIR = SHIPPED / "cfg"
CAFFE_DIR = CFG_DIR / "caffe"
WEIGHTS_DIR = SHIPPED / "weights"
DEFAULT_DATA = CFG_DIR / "imagenet1k.data"
DEFAULT_LABELS = SHIPPED / "data" / "imagenet.labels.list"
SAMPLE_IMAGE = SHIPPED / "data" / "dog.jpg"


def resolve(path: str | Path) -> Path:
    """A path as given if it exists, else the same path among the shipped files."""
    path = Path(path)
    if path.exists() or path.is_absolute():
        return path
    inside = SHIPPED / path
    return inside if inside.exists() else path


def shipped_cfgs() -> list[Path]:
    """The shipped network cfgs, by name."""
    return sorted(CFG_DIR.glob("*.cfg"))


def shipped_prototxts() -> list[Path]:
    """The shipped Caffe deploy prototxts (cfg/caffe), by name."""
    return sorted(CAFFE_DIR.glob("*.prototxt"))


def _plain(name: str) -> str:
    """A cfg name as people spell it: any case, with or without - and _ ("VGG16", "vgg-16")."""
    return name.lower().replace("-", "").replace("_", "")


def find_cfg(name: str | Path) -> Path:
    """A cfg path as given if it exists, else a shipped cfg by its short name ("darknet19",
    "darknet19.cfg" or "cfg/darknet19.cfg" from any folder; "Tiny", "vgg16" and "darknet-19"
    find tiny, vgg-16 and darknet19) or a shipped Caffe prototxt by its name ("bvlc_googlenet",
    "ResNet-50-deploy"); else the path as given, for the reader to report."""
    path = Path(name)
    if path.exists():
        return path
    stem = path.stem if path.suffix in (".cfg", ".prototxt") else path.name
    if path.parent in (Path("."), Path("cfg"), Path("cfg/caffe")):
        for shipped in (CFG_DIR / f"{stem}.cfg", CAFFE_DIR / f"{stem}.prototxt"):
            if shipped.is_file():
                return shipped
        alike = [cfg for cfg in shipped_cfgs() + shipped_prototxts() if _plain(cfg.stem) == _plain(stem)]
        if len(alike) == 1:
            return alike[0]
    return path


def nearest_cfgs(name: str | Path) -> list[str]:
    """Shipped cfg names close to a name that found none (for "did you mean ...?")."""
    names = {_plain(cfg.stem): cfg.stem for cfg in shipped_cfgs()}
    close = difflib.get_close_matches(_plain(Path(name).stem), list(names), n=3, cutoff=0.6)
    return [names[match] for match in close]


def read_data_file(path: str | Path) -> dict[str, str]:
    """A Darknet .data file's options; the first of repeated keys counts, as in Darknet."""
    options: dict[str, str] = {}
    for number, raw in enumerate(read_text(path, "data file", MB).splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        key, equals, value = line.partition("=")
        if not equals:
            raise KernError(f"{path}:{number}: expected key=value, got {quote(line)}")
        options.setdefault(key.strip(), value.strip())
    return options


def data_top(path: str | Path) -> int:
    """`top=` of a .data file (1 where absent, as Darknet): how many classes to print."""
    value = read_data_file(path).get("top", "1")
    if not value.isascii() or not value.isdigit() or len(value) > 10 or not 1 <= int(value) < 1 << 31:
        raise KernError(f"{path}: top={quote(value, 30, marks=False)}: expected a positive integer")
    return int(value)


def read_lines(path: str | Path, what: str) -> list[str]:
    """A list file's lines, stripped (labels, names, image paths)."""
    return [line.strip() for line in read_text(resolve(path), what, 256 * MB).splitlines()]


def load_names(data_file: str | Path, classes: int) -> list[str]:
    """The first `classes` display names from the .data file's names= (else labels=) list."""
    options = read_data_file(data_file)
    names_path = options.get("names") or options.get("labels")
    if not names_path:
        raise KernError(f"{data_file}: expected a names= or labels= line")
    names = read_lines(names_path, "names list")
    if len(names) < classes:
        raise KernError(
            f"{names_path}: has {len(names)} names, the network has {classes} outputs"
        )
    return names[:classes]
