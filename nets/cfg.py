"""Darknet .cfg files: `[section]` lines open a layer, `key=value` lines set its options.

Whitespace around keys, '=' and values is insignificant; '#' and ';' start comment lines.
Every error names the file and line and says what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from kern.errors import KernError


@dataclass
class Option:
    value: str
    line: int


@dataclass
class Section:
    """One `[name]` block of a cfg; typed getters record which options a builder read."""

    name: str
    path: str
    line: int
    options: dict[str, Option] = field(default_factory=dict)
    read: set[str] = field(default_factory=set)

    def where(self, key: str | None = None) -> str:
        line = self.options[key].line if key in self.options else self.line
        return f"{self.path}:{line}"

    def error(self, message: str, key: str | None = None) -> KernError:
        return KernError(f"{self.where(key)}: [{self.name}] {message}")

    def has(self, key: str) -> bool:
        return key in self.options

    def text(self, key: str, default: str) -> str:
        self.read.add(key)
        option = self.options.get(key)
        return default if option is None else option.value

    def integer(self, key: str, default: int) -> int:
        value = self.text(key, str(default))
        try:
            return int(value)
        except ValueError:
            raise self.error(f"{key}={value}: expected an integer", key) from None

    def number(self, key: str, default: float) -> float:
        value = self.text(key, str(default))
        try:
            return float(value)
        except ValueError:
            raise self.error(f"{key}={value}: expected a number", key) from None

    def integers(self, key: str) -> list[int]:
        if key not in self.options:
            raise self.error(f"needs {key}=")
        value = self.text(key, "")
        try:
            return [int(part) for part in value.split(",") if part.strip()]
        except ValueError:
            raise self.error(f"{key}={value}: expected comma-separated integers", key) from None

    def choice(self, key: str, default: str, allowed: tuple[str, ...]) -> str:
        value = self.text(key, default)
        if value not in allowed:
            raise self.error(f"{key}={value}: expected one of {', '.join(allowed)}", key)
        return value

    def check_unknown(self, ignored: frozenset[str]) -> None:
        """Fail on an option no builder read and that is not a known training-only key."""
        for key in self.options:
            if key not in self.read and key not in ignored:
                raise self.error(f"unknown option {key!r}", key)


def parse_cfg(path: str | Path) -> list[Section]:
    """Read a cfg file into sections, in order; the first must be [net] (or [network])."""
    path = str(path)
    try:
        with open(path, encoding="utf-8") as file:
            lines = file.read().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or error
        raise KernError(
            f"cannot read cfg {path}: {reason} "
            "(a cfg path, or a shipped cfg's name: python -m nets.predict --list)"
        ) from None
    sections: list[Section] = []
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            if not line.endswith("]") or len(line) < 3:
                raise KernError(f"{path}:{number}: expected a [section] line, got {line!r}")
            sections.append(Section(line[1:-1].strip(), path, number))
            continue
        key, equals, value = line.partition("=")
        if not equals or not key.strip():
            raise KernError(f"{path}:{number}: expected key=value, got {line!r}")
        if not sections:
            raise KernError(f"{path}:{number}: option {key.strip()!r} before the first [section]")
        sections[-1].options[key.strip()] = Option(value.strip(), number)
    if not sections or sections[0].name not in ("net", "network"):
        raise KernError(f"{path}: expected the first section to be [net]")
    return sections
