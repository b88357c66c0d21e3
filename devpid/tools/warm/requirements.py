"""The requirements to warm: from the command line and from ``-r`` files.

pip is given the requirements as arguments, not the files, so that a failed
resolution can be retried one requirement at a time (the rest is still warmed)
and each failure names the requirement and the line it came from.

What a requirements file may hold, read the way pip reads it for what matters here:
comments (``#`` after a blank or at the start), ``\\``-continued lines, nested
``-r``/``--requirement`` and ``-c``/``--constraint`` files (relative to the file),
``--hash`` options (dropped: devpid checks every file's sha256 and so does warm).
Editable (``-e``) lines and the other options (``--index-url`` and the like, which
would lead pip past devpid) are skipped, each with a note.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs

_COMMENT = re.compile(r"(^|\s+)#.*$")
_HASH_OPTION = re.compile(r"\s--hash(=|\s+)\S+")
_NESTED = re.compile(r"^(-r|--requirement|-c|--constraint)(=|\s+|(?=\S))(.+)$")


class RequirementsError(ValueError):
    """A requirements file that cannot be read (missing, a loop of ``-r``)."""


@attrs.frozen
class Unit:
    """One requirement and where it came from (``FILE:LINE`` or ``command line``)."""

    requirement: str
    origin: str


@attrs.frozen
class Requirements:
    """What to resolve: the units, the constraint files, and notes on skipped lines."""

    units: tuple[Unit, ...]
    constraints: tuple[Path, ...] = ()
    notes: tuple[str, ...] = ()

    def pip_arguments(self, units: Sequence[Unit] | None = None) -> list[str]:
        """pip's arguments for ``units`` (all by default), constraints included."""
        arguments: list[str] = []
        for constraint in self.constraints:
            arguments += ["-c", str(constraint)]
        chosen = self.units if units is None else units
        return arguments + [unit.requirement for unit in chosen]


def _logical_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(first line number, text)`` with comments removed and continuations joined."""
    pending, start = "", 0
    with path.open(encoding="utf-8") as lines:
        for number, raw in enumerate(lines, 1):
            line = raw.rstrip("\r\n")
            if not pending:
                start = number
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            text = _COMMENT.sub("", pending + line).strip()
            pending = ""
            if text:
                yield start, text
    text = _COMMENT.sub("", pending).strip()
    if text:
        yield start, text


def read_requirements(names: Sequence[str], files: Sequence[str]) -> Requirements:
    """The units of the command line's ``names`` and of the ``-r`` ``files``."""
    units = [Unit(name, "command line") for name in names]
    constraints: list[Path] = []
    notes: list[str] = []
    seen: set[Path] = set()

    def read(path: Path) -> None:
        resolved = path.resolve()
        if resolved in seen:
            raise RequirementsError(f"{path}: read twice (a loop of -r?)")
        seen.add(resolved)
        try:
            lines = list(_logical_lines(path))
        except OSError as e:
            raise RequirementsError(f"cannot read {path}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise RequirementsError(f"cannot read {path}: not UTF-8") from None
        for number, text in lines:
            origin = f"{path}:{number}"
            nested = _NESTED.match(text)
            if nested is not None:
                option, target = nested.group(1), nested.group(3).strip()
                target_path = path.parent / target
                if option in ("-r", "--requirement"):
                    read(target_path)
                else:
                    constraints.append(target_path)
            elif text.startswith(("-e", "--editable")):
                notes.append(f"{origin}: editable requirement skipped: {text}")
            elif text.startswith("-"):
                notes.append(f"{origin}: option skipped (warm resolves through devpid): {text}")
            else:
                units.append(Unit(_HASH_OPTION.sub("", " " + text).strip(), origin))

    for name in files:
        read(Path(name))
    return Requirements(tuple(units), tuple(constraints), tuple(notes))
