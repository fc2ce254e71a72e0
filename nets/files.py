"""Reading what the user names, safely: only regular files, never more than a stated size (a
cfg path of /dev/zero or a FIFO must not hang or exhaust memory), and user text quoted short
in error lines."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from kern.errors import KernError

MB = 1 << 20


def quote(text: str, limit: int = 60, marks: bool = True) -> str:
    """repr(text) (without its quote marks if not `marks`), cut to about `limit` characters
    with its length said where it was cut."""
    shown = repr(text) if marks else repr(text)[1:-1]
    if len(shown) <= limit:
        return shown
    return f"{shown[:limit]}... ({len(text)} characters)"


def regular_file_size(path: str | Path, what: str) -> int:
    """The size of a regular file; a KernError naming `what` for anything else."""
    try:
        info = os.stat(path)
    except (OSError, ValueError) as error:  # ValueError: a NUL byte in the path
        raise KernError(f"cannot read {what} {path}: {getattr(error, 'strerror', None) or error}") from None
    if stat.S_ISDIR(info.st_mode):
        raise KernError(f"cannot read {what} {path}: it is a directory")
    if not stat.S_ISREG(info.st_mode):
        raise KernError(f"cannot read {what} {path}: not a regular file")
    return info.st_size


def read_bytes(path: str | Path, what: str, limit: int) -> bytes:
    """A regular file's bytes; refuses one over `limit` bytes before reading it."""
    size = regular_file_size(path, what)
    if size > limit:
        raise KernError(
            f"cannot read {what} {path}: {size / MB:.1f} MB, more than any {what} ({limit / MB:.0f} MB)"
        )
    try:
        with open(path, "rb") as file:
            return file.read(limit + 1)
    except OSError as error:
        raise KernError(f"cannot read {what} {path}: {error.strerror}") from None


def read_text(path: str | Path, what: str, limit: int) -> str:
    """A regular file as UTF-8 text (see read_bytes)."""
    data = read_bytes(path, what, limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise KernError(f"cannot read {what} {path}: not UTF-8 text (byte {error.start})") from None


def write_atomically(path: str | Path, write: Callable[[BinaryIO], None], what: str) -> None:
    """Write a file whole or not at all: into a temporary file beside `path`, flushed to disk,
    then renamed over it. A kill at any moment leaves the old file (or none) and at worst a
    stray temporary, never a truncated `path`."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise KernError(f"cannot write {what} {path}: {error.strerror or error}") from None
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def check_writable(path: str) -> None:
    """Fail now, not after the whole run, if the --json file cannot be written."""
    target = Path(path)
    folder = target.parent
    if target.is_dir():
        raise KernError(f"cannot write {path}: it is a directory")
    if not folder.is_dir():
        raise KernError(f"cannot write {path}: no folder {folder}")
    if not os.access(folder, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise KernError(f"cannot write {path}: permission denied")
