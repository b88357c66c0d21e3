"""The name index: hundreds of thousands of project names, searched in small steps.

A mirror's upstream lists about 700,000 names. Kept as 700,000 ``str`` objects
(plus a list and a set) they would cost well over 60 MB; here they are sorted,
normalised and joined with ``"\\n"`` into chunks of ``CHUNK_NAMES`` names, a
few big strings (about 12 bytes a name), with an array of where each line
starts. ``str.find`` and ``str.count`` run over a chunk at C speed; names that
start with a term are a contiguous block of a sorted chunk (found by
bisection); only a chunk with many matches is split into lines, for the time
of one step. For fuzzy matching the names are kept a second time grouped by
length, so a typo is compared only with names of a length that could reach
the cut-off; ``rapidfuzz`` gets one group's ``split("\\n")`` at a time.

Searching is a generator that yields after each chunk: the catalog runs it a
few chunks at a time and lets the reactor serve others in between. The index
itself is immutable once built, so it can be built in a thread.
"""

from __future__ import annotations

import heapq
import math
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Generator, Iterable

import attrs
from rapidfuzz import fuzz, process

from devpid.search.query import Query, normalise_name

#: Names per chunk: one step of a search handles one chunk (a few ms at most).
CHUNK_NAMES = 5_000
#: The least ``rapidfuzz`` ratio (0-100) of a fuzzy match.
FUZZY_CUTOFF = 80.0
#: A fuzzy match is a typo: at most this many characters longer or shorter.
FUZZY_LENGTH_SLACK = 3
#: Shorter name queries get no fuzzy matches (too many, too arbitrary).
FUZZY_MIN_CHARS = 3
#: Up to this many occurrences a chunk is searched with ``str.find``; more, it is split.
_FIND_MAX = 64
#: Sorts after any name starting with the same text.
_AFTER = "\U0010ffff"

Steps = Generator[None, None, "NameMatches"]


@attrs.frozen
class NameMatch:
    """One name found, how (``exact``, ``prefix``, ``substring``, ``fuzzy``) and its score."""

    name: str
    kind: str
    score: float


@attrs.define
class NameMatches:
    """The best ``want`` matches and how many matched in all (fuzzy ones: only those kept)."""

    hits: list[NameMatch]
    total: int


@attrs.frozen
class _Chunk:
    """Sorted names, one a line between line breaks; ``starts[k]`` is where line k starts."""

    text: str
    starts: array[int]

    @classmethod
    def of(cls, names: list[str]) -> _Chunk:
        starts = array("I", [0]) * (len(names) + 1)
        position = 1
        for k, name in enumerate(names):
            starts[k] = position
            position += len(name) + 1
        starts[len(names)] = position
        return cls("\n" + "\n".join(names) + "\n", starts)

    def __len__(self) -> int:
        return len(self.starts) - 1

    def line(self, k: int) -> str:
        return self.text[self.starts[k] : self.starts[k + 1] - 1]

    def lines(self, lo: int, hi: int) -> list[str]:
        if hi <= lo:
            return []
        return self.text[self.starts[lo] : self.starts[hi] - 1].split("\n")

    def first(self) -> str:
        return self.line(0)

    def block(self, prefix: str) -> tuple[int, int]:
        """The lines ``lo:hi`` that start with ``prefix`` (contiguous: the chunk is sorted)."""
        position = self.text.find("\n" + prefix)
        if position == -1:
            return 0, 0
        lo = bisect_right(self.starts, position + 1) - 1
        hi = bisect_left(range(len(self)), prefix + _AFTER, lo=lo, key=self.line)
        return lo, hi

    def containing(self, term: str, lo: int, hi: int) -> list[str]:
        """The names containing ``term`` outside the lines ``lo:hi``."""
        text = self.text
        count = text.count(term)
        if count <= hi - lo:  # each of those lines has one at least: nothing else can match
            return []
        if count > _FIND_MAX:
            lines = text[1:-1].split("\n")
            if hi > lo:
                del lines[lo:hi]
            return [name for name in lines if term in name]
        found = []
        position = text.find(term)
        while position != -1:
            start = text.rfind("\n", 0, position) + 1
            end = text.find("\n", position)
            if end == -1:  # the term holds a line break (it cannot, normalised): stop
                break
            line = bisect_right(self.starts, start) - 1
            if not lo <= line < hi:
                found.append(text[start:end])
            position = text.find(term, end)
        return found


@attrs.frozen
class NameIndex:
    """Normalised, deduplicated names in sorted chunks, plus the same grouped by length."""

    chunks: tuple[_Chunk, ...]
    #: (length, names of that length joined with "\n"), by length.
    by_length: tuple[tuple[int, str], ...]
    firsts: tuple[str, ...]
    size: int

    @classmethod
    def build(cls, names: Iterable[str], chunk_names: int = CHUNK_NAMES) -> NameIndex:
        """The index of ``names`` (any form; normalised here). Seconds for 700,000 names."""
        ordered = sorted({normalise_name(n) for n in names} - {""})
        chunks = tuple(
            _Chunk.of(ordered[i : i + chunk_names]) for i in range(0, len(ordered), chunk_names)
        )
        groups: dict[int, list[str]] = {}
        for name in ordered:
            groups.setdefault(len(name), []).append(name)
        by_length = tuple(
            (length, "\n".join(group[i : i + chunk_names]))
            for length, group in sorted(groups.items())
            for i in range(0, len(group), chunk_names)
        )
        return cls(chunks, by_length, tuple(c.first() for c in chunks), len(ordered))

    @classmethod
    def building(
        cls, groups: Iterable[list[str]], chunk_names: int = CHUNK_NAMES
    ) -> Generator[None, None, NameIndex]:
        """The index of ``groups`` of names already sorted, normalised and unique (a names
        file's blocks, ``devpid.simple.namelist``), built a group at a time: a step per
        group, for the caller to give the reactor back in between. Never holds the names
        as strings of their own beyond one group."""
        chunks: list[_Chunk] = []
        pieces: dict[int, list[str]] = {}
        size = 0
        for names in groups:
            if not names:
                continue
            chunks.append(_Chunk.of(names))
            lengths: dict[int, list[str]] = {}
            for name in names:
                lengths.setdefault(len(name), []).append(name)
            for length, group in lengths.items():
                pieces.setdefault(length, []).append("\n".join(group))
            size += len(names)
            yield
        by_length: list[tuple[int, str]] = []
        for length in sorted(pieces):
            # names of one length: a block of k names is k * (length + 1) - 1 characters
            text = "\n".join(pieces.pop(length))
            step = chunk_names * (length + 1)
            by_length.extend((length, text[i : i + step - 1]) for i in range(0, len(text), step))
            del text
            yield
        return cls(tuple(chunks), tuple(by_length), tuple(c.first() for c in chunks), size)

    def __contains__(self, name: str) -> bool:
        i = bisect_right(self.firsts, name) - 1
        return i >= 0 and self.chunks[i].text.find("\n" + name + "\n") != -1

    def all_names(self, want: int) -> Steps:
        """A filter-only query (``index:x``): every name matches; the first ``want`` by name."""
        hits: list[NameMatch] = []
        for chunk in self.chunks:
            if len(hits) >= want:
                break
            hits.extend(NameMatch(n, "substring", 60.0) for n in chunk.lines(0, want - len(hits)))
            yield
        return NameMatches(hits, self.size)

    def matches(self, query: Query, want: int) -> Steps:
        """The best ``want`` exact, prefix and substring matches of a names-only ``query``."""
        terms = query.name_terms
        if not terms:
            return (yield from self.all_names(want))
        prefixes = [t.name_form for t in terms if t.prefix]
        plain = [t.name_form for t in terms if not t.prefix]
        driver = max(prefixes or plain, key=len)
        driver_is_prefix = bool(prefixes)
        (prefixes if driver_is_prefix else plain).remove(driver)
        joined = query.joined
        covered = sum(len(t.name_form) for t in terms)

        def others_match(name: str) -> bool:
            return all(p in name for p in plain) and all(name.startswith(p) for p in prefixes)

        others = others_match if plain or prefixes else None

        def scored(name: str, base: float) -> NameMatch:
            kind = "prefix" if base == 80.0 else "substring"
            return NameMatch(name, kind, base + 19.0 * min(1.0, covered / len(name)))

        kept: list[NameMatch] = []
        total = 0
        exact = (
            joined in self
            and others_match(joined)
            and (not driver_is_prefix or joined.startswith(driver))
        )
        if exact:
            kept.append(NameMatch(joined, "exact", 100.0))
            total += 1
        for chunk in self.chunks:
            lo, hi = chunk.block(driver)
            found = self._kept(chunk.lines(lo, hi), joined if exact else None, others)
            total += len(found)
            kept.extend(scored(n, 80.0) for n in heapq.nsmallest(want, found, key=len))
            if not driver_is_prefix:
                found = self._kept(
                    chunk.containing(driver, lo, hi), joined if exact else None, others
                )
                total += len(found)
                kept.extend(scored(n, 60.0) for n in heapq.nsmallest(want, found, key=len))
            if len(kept) > 4 * want:  # few live objects: less for the garbage collector
                kept = _best(kept, want)
            yield
        return NameMatches(_best(kept, want), total)

    @staticmethod
    def _kept(
        names: list[str], exact: str | None, others: Callable[[str], bool] | None
    ) -> list[str]:
        """``names`` without the exact match (counted apart) and those other terms rule out."""
        if others is not None:
            names = [n for n in names if others(n)]
        if exact is not None and exact in names:
            names.remove(exact)
        return names

    def fuzzy(self, text: str, want: int, already: Callable[[str], bool]) -> Steps:
        """Names within ``FUZZY_CUTOFF`` of ``text``, except those ``already`` found."""
        kept: list[NameMatch] = []
        total = 0
        if len(text) < FUZZY_MIN_CHARS or want <= 0:
            return NameMatches(kept, 0)
        # the ratio is 2*common/(len1+len2): lengths outside this band cannot reach the cut-off
        cut = FUZZY_CUTOFF / 100.0
        shortest = math.ceil(len(text) * cut / (2.0 - cut))
        longest = math.floor(len(text) * (2.0 - cut) / cut)
        shortest = max(shortest, len(text) - FUZZY_LENGTH_SLACK)
        longest = min(longest, len(text) + FUZZY_LENGTH_SLACK)
        for length, names in self.by_length:
            if length < shortest:
                continue
            if length > longest:
                break
            found = process.extract(
                text,
                names.split("\n"),
                scorer=fuzz.ratio,
                score_cutoff=FUZZY_CUTOFF,
                limit=want * 2,
            )
            new = [
                NameMatch(name, "fuzzy", round(39.0 * score / 100.0, 3))
                for name, score, _ in found
                if not already(name)
            ]
            total += len(new)
            kept.extend(new)
            if len(kept) > 4 * want:
                kept = _best(kept, want)
            yield
        return NameMatches(_best(kept, want), total)


def _best(matches: list[NameMatch], want: int) -> list[NameMatch]:
    return sorted(matches, key=lambda m: (-m.score, m.name))[:want]


__all__ = ["CHUNK_NAMES", "FUZZY_CUTOFF", "NameIndex", "NameMatch", "NameMatches"]
