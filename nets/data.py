"""Darknet .data files (key = value) and label lists, with paths resolved like Darknet's
(relative to the working directory) and then relative to this repository."""

from __future__ import annotations

from pathlib import Path

from kern.errors import KernError

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO / "cfg" / "imagenet1k.data"


def resolve(path: str | Path) -> Path:
    """A path as given if it exists, else the same path inside the repository."""
    path = Path(path)
    if path.exists() or path.is_absolute():
        return path
    inside = REPO / path
    return inside if inside.exists() else path


def read_data_file(path: str | Path) -> dict[str, str]:
    options = {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise KernError(f"cannot read data file {path}: {getattr(error, 'strerror', None) or error}") from None
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        key, equals, value = line.partition("=")
        if not equals:
            raise KernError(f"{path}:{number}: expected key=value, got {line!r}")
        options[key.strip()] = value.strip()
    return options


def read_lines(path: str | Path, what: str) -> list[str]:
    path = resolve(path)
    try:
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as error:
        raise KernError(f"cannot read {what} {path}: {getattr(error, 'strerror', None) or error}") from None


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
