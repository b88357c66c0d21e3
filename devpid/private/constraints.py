"""A constrained index's rules: which of its bases' projects and versions it shows.

devpi-constrained's index type. ``constraints`` is a list of requirement lines
(``requests<2.32``, ``django==4.2.*``, ``pip<8,>4``) and ``*``, which hides
every project no line names. A project with a line shows only the versions
its specifiers contain (pre-releases too: a specifier allows what it
contains); one without a line shows everything, unless ``*`` hides it.

The string form devpi-client sends (``constraints="$(cat constraints.txt)"``)
is split on newlines, never on commas: ``pip<8,>4`` is one line. Blank lines
and ``#`` comments are dropped. Each line is checked with ``packaging`` when
the index is changed and stored normalised (``Django >= 4.2`` becomes
``django>=4.2``), so ``constraints-=`` finds a line however it was spelled.

Pure: nothing here knows of pages or HTTP. A file's version comes from its
name (wheel or sdist, by ``packaging``); a file whose name yields no version
of the project is hidden when the project has a line.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

if TYPE_CHECKING:
    from packaging.specifiers import SpecifierSet

# ``packaging.requirements`` (and the specifiers and markers it brings) is imported where
# a constraint is parsed, not at start-up: most indexes have none.

from devpid.private.names import InvalidConfig, shown

__all__ = [
    "ALL",
    "CONSTRAINED",
    "Constraints",
    "constraint_line",
    "constraints_of",
    "file_version",
    "normalise_constraints",
    "read_only_message",
]

#: The index type (devpi-constrained's name for it).
CONSTRAINED = "constrained"

#: The line that hides every project no other line names.
ALL = "*"

#: The most lines one index may have, and the longest line.
MAX_CONSTRAINTS, MAX_LINE = 10_000, 1_000

#: A project name as PEP 508 has it.
_VALID_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")

#: Older sdist formats ``packaging`` doesn't parse, read as ``<name>-<version><ext>``.
_LEGACY_ARCHIVES = (".tar.bz2", ".tar.xz", ".tgz", ".tbz", ".tar")


def _reason(error: Exception) -> str:
    """packaging's message without the lines that point at the column."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else "not a requirement"


def constraint_line(text: str) -> str:
    """One line (comment and surrounding space already gone) in its stored form."""
    if len(text) > MAX_LINE:
        raise InvalidConfig(f"constraint {shown(text)} is longer than {MAX_LINE} characters")
    if text == ALL:
        return ALL
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        requirement = Requirement(text)
    except InvalidRequirement as e:
        raise InvalidConfig(f"bad constraint {shown(text)}: {_reason(e)}") from None
    if requirement.url:
        raise InvalidConfig(f"bad constraint {shown(text)}: a URL can't constrain an index")
    if requirement.marker is not None:
        raise InvalidConfig(
            f"bad constraint {shown(text)}: an index can't evaluate environment markers"
        )
    if not _VALID_NAME.fullmatch(requirement.name):
        # packaging reads ``A_`` as a name; PEP 508 (and any index) does not
        raise InvalidConfig(f"bad constraint {shown(text)}: not a valid project name")
    # Extras don't change which files an index shows: dropped, as devpi ignores them.
    return f"{canonicalize_name(requirement.name)}{requirement.specifier}"


def _without_comment(item: str) -> str:
    # A requirement line (no URLs allowed) has no ``#`` of its own: the rest is a comment.
    return item.partition("#")[0].strip()


def normalise_constraints(value: object) -> list[str]:
    """The stored form of ``constraints``: a string split into lines, or a list of lines.

    Blank lines and comments dropped, every line checked and normalised, a line
    given twice kept once; two lines for one project are refused (devpi's rule).
    """
    if isinstance(value, str):
        items: Sequence[object] = value.splitlines()
    elif isinstance(value, list | tuple):
        items = value
    else:
        raise InvalidConfig(f"'constraints' takes requirement lines, not {shown(value)}")
    lines: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise InvalidConfig(f"'constraints' takes requirement lines, not {shown(item)}")
        text = _without_comment(item)
        if text:
            lines.append(constraint_line(text))
        if len(lines) > MAX_CONSTRAINTS:
            raise InvalidConfig(f"an index may have at most {MAX_CONSTRAINTS} constraints")
    lines = list(dict.fromkeys(lines))
    check_one_per_project(lines)
    return lines


def _project_of(line: str) -> str:
    from packaging.requirements import Requirement

    return canonicalize_name(Requirement(line).name)


def check_one_per_project(lines: Iterable[str]) -> None:
    """Refuse two lines for one project: which should win is not for devpid to guess."""
    seen: dict[str, str] = {}
    for line in lines:
        if line == ALL:
            continue
        project = _project_of(line)
        if project in seen:
            raise InvalidConfig(
                f"constraint for {project!r} given twice: {shown(seen[project])} and {shown(line)}"
            )
        seen[project] = line


# -- applying them ----------------------------------------------------------------------


def file_version(project: str, filename: str) -> Version | None:
    """The version of ``project`` a distribution file's name carries, else None
    (another project's file, or a name that yields no valid version)."""
    try:
        if filename.endswith(".whl"):
            name, version, *_ = parse_wheel_filename(filename)
            return version if name == project else None
        name, version = parse_sdist_filename(filename)
        return version if name == project else None
    except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion):
        pass
    for suffix in _LEGACY_ARCHIVES:
        if filename.endswith(suffix):
            stem, _, text = filename[: -len(suffix)].rpartition("-")
            try:
                found = Version(text)
            except InvalidVersion:
                return None
            return found if stem and canonicalize_name(stem) == project else None
    return None


@attrs.frozen
class Constraints:
    """An index's parsed ``constraints``."""

    #: Normalised project name -> the versions it may show.
    rules: Mapping[str, SpecifierSet] = attrs.field(factory=dict)
    #: ``*``: projects without a rule are hidden.
    only_listed: bool = False

    def allows_project(self, project: str) -> bool:
        return not self.only_listed or project in self.rules

    def allows_version(self, project: str, version: str) -> bool:
        """A version string (as a page or a stage keeps it); an invalid one passes only
        for a project without a rule."""
        rule = self.rules.get(project)
        if rule is None:
            return self.allows_project(project)
        try:
            return rule.contains(Version(version), prereleases=True)
        except InvalidVersion:
            return False

    def allows_file(self, project: str, filename: str) -> bool:
        rule = self.rules.get(project)
        if rule is None:
            return self.allows_project(project)
        version = file_version(project, filename)
        return version is not None and rule.contains(version, prereleases=True)

    def stamp(self, project: str) -> tuple[bool, str | None]:
        """What a filtered answer for ``project`` depends on: equal stamps, equal answers."""
        rule = self.rules.get(project)
        return (self.allows_project(project), None if rule is None else str(rule))


@functools.lru_cache(maxsize=64)
def _parsed(lines: tuple[str, ...]) -> Constraints:
    from packaging.requirements import InvalidRequirement, Requirement

    rules: dict[str, SpecifierSet] = {}
    only_listed = False
    for line in lines:
        if line == ALL:
            only_listed = True
            continue
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue  # stored lines were checked; an edited record's bad line is skipped
        rules.setdefault(canonicalize_name(requirement.name), requirement.specifier)
    return Constraints(rules, only_listed)


def constraints_of(config: Mapping[str, Any] | None) -> Constraints | None:
    """The constraints of a constrained index's configuration; None for any other index."""
    if config is None or config.get("type") != CONSTRAINED:
        return None
    lines = config.get("constraints") or ()
    if isinstance(lines, str):
        lines = lines.splitlines()
    return _parsed(tuple(str(line) for line in lines))


def read_only_message(index: str) -> str:
    """The refusal of an upload, push or deletion on a constrained index."""
    return (
        f"{index} is a constrained index: read-only, it shows its bases' releases "
        "and takes none of its own"
    )
