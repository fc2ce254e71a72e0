"""Darknet .cfg files: `[section]` lines open a layer, `key=value` lines set its options.

Whitespace around keys, '=' and values is insignificant; '#' and ';' start comment lines.
Every error names the file and line and says what was expected.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from kern.errors import KernError
from nets.data import nearest_cfgs
from nets.files import MB, quote, read_text

CFG_LIMIT = 16 * MB  # the largest shipped cfg is 20 KB
INT_LIMIT = 1 << 31  # Darknet reads options into C ints
# What C's atoi and atof read unambiguously; anything else ("1_0", "3x", non-ASCII digits, nan)
# is refused rather than read differently from Darknet.
INTEGER = re.compile(r"[+-]?[0-9]+")
NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def setting(key: str, value: str) -> str:
    """`key=value` for an error line, a long value cut short."""
    return f"{key}={quote(value, 30, marks=False)}"


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
        return KernError(f"{self.where(key)}: [{quote(self.name, 30, marks=False)}] {message}")

    def has(self, key: str) -> bool:
        return key in self.options

    def text(self, key: str, default: str) -> str:
        self.read.add(key)
        option = self.options.get(key)
        return default if option is None else option.value

    def _integer(self, key: str, value: str, expected: str) -> int:
        # int() of a long string is slow (and refused past 4300 digits): length first.
        if not INTEGER.fullmatch(value) or len(value) > 12 or abs(int(value)) >= INT_LIMIT:
            raise self.error(f"{setting(key, value)}: expected {expected} (below 2^31)", key)
        return int(value)

    def integer(self, key: str, default: int) -> int:
        return self._integer(key, self.text(key, str(default)), "an integer")

    def _number(self, key: str, value: str, expected: str) -> float:
        if not NUMBER.fullmatch(value) or not math.isfinite(float(value)):
            raise self.error(f"{setting(key, value)}: expected {expected}", key)
        return float(value)

    def number(self, key: str, default: float) -> float:
        return self._number(key, self.text(key, str(default)), "a finite decimal number")

    def numbers(self, key: str) -> list[float]:
        """A comma-separated list of decimal numbers (Darknet's `scales=`)."""
        if key not in self.options:
            raise self.error(f"needs {key}=")
        parts = [part.strip() for part in self.text(key, "").split(",") if part.strip()]
        return [self._number(key, part, "comma-separated decimal numbers") for part in parts]

    def integers(self, key: str) -> list[int]:
        if key not in self.options:
            raise self.error(f"needs {key}=")
        parts = [part.strip() for part in self.text(key, "").split(",") if part.strip()]
        return [self._integer(key, part, "comma-separated integers") for part in parts]

    def choice(self, key: str, default: str, allowed: tuple[str, ...]) -> str:
        value = self.text(key, default)
        if value not in allowed:
            raise self.error(f"{setting(key, value)}: expected one of {', '.join(allowed)}", key)
        return value

    def check_unknown(self, ignored: frozenset[str]) -> None:
        """Fail on an option no builder read and that is not a known training-only key."""
        for key in self.options:
            if key not in self.read and key not in ignored:
                raise self.error(f"unknown option {quote(key, 40)}", key)


def parse_cfg(path: str | Path) -> list[Section]:
    """Read a cfg file into sections, in order; the first must be [net] (or [network])."""
    path = str(path)
    if path.endswith(".data"):
        raise KernError(
            f"{path}: a Darknet .data file where a cfg was expected (Darknet's order, DATA CFG WEIGHTS, is "
            "nets.train's; nets.predict takes it as --data, nets.valid as its SOURCE)"
        )
    try:
        text = read_text(path, "cfg", CFG_LIMIT)
    except KernError as error:
        nearest = nearest_cfgs(path) if not Path(path).exists() else []
        guess = f"did you mean {' or '.join(nearest)}? " if nearest else ""
        hint = f"{guess}a cfg path, or a shipped cfg's name: python -m nets.predict --list"
        raise KernError(f"{error} ({hint})") from None
    lines = text.splitlines()
    sections: list[Section] = []
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            if not line.endswith("]") or len(line) < 3:
                raise KernError(f"{path}:{number}: expected a [section] line, got {quote(line)}")
            sections.append(Section(line[1:-1].strip(), path, number))
            continue
        key, equals, value = line.partition("=")
        if not equals or not key.strip():
            raise KernError(f"{path}:{number}: expected key=value, got {quote(line)}")
        if not sections:
            raise KernError(f"{path}:{number}: option {quote(key.strip())} before the first [section]")
        # Darknet's option_find returns the first of repeated keys: so does kern.
        sections[-1].options.setdefault(key.strip(), Option(value.strip(), number))
    if not sections or sections[0].name not in ("net", "network"):
        raise KernError(f"{path}: expected the first section to be [net]")
    return sections
