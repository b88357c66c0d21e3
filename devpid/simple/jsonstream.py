"""Reading a large JSON object in pieces: its big arrays item by item.

A PEP 691 project page (and devpid's page file) is one object whose ``files``
(``links``) array may hold 200,000 entries: ``json.loads`` of it builds all of
them at once, and wants the whole text in memory first. ``scan_object`` reads
the text in chunks from a binary file and hands each member, and each item of
the arrays it is told are big, to its caller as soon as it is whole; only one
item (and a chunk of text) is held at a time. Items are decoded by the
standard library's C scanner (``JSONDecoder.raw_decode``), so it is about as
fast as ``json.loads``.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator
from typing import IO, Any

#: Bytes read at a time (more when one value is larger).
CHUNK = 1 << 20
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


class JSONStreamError(ValueError):
    """The text is not one JSON object (or is cut short); the message is one line."""


#: What ``scan_object`` yields: ``(key, value, False)`` for a member, and for a
#: big array member ``(key, [], False)`` then ``(key, item, True)`` for each item.
Event = tuple[str, Any, bool]


class _Text:
    """The not yet consumed text and the position in it, refilled from the file."""

    def __init__(self, source: IO[bytes], chunk: int) -> None:
        self.source = source
        self.chunk = chunk
        self.decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self.text = ""
        self.pos = 0
        self.eof = False

    def more(self, at_least: int = 0) -> bool:
        """Read another chunk (at least ``at_least`` bytes); False at the end of the file."""
        if self.eof:
            return False
        if self.pos > self.chunk:  # drop what was consumed
            self.text = self.text[self.pos :]
            self.pos = 0
        data = self.source.read(max(self.chunk, at_least))
        try:
            decoded = self.decoder.decode(data, final=not data)
        except UnicodeDecodeError as e:
            raise JSONStreamError(f"not UTF-8: {e}") from None
        self.text += decoded
        if not data:
            self.eof = True
        return True

    def peek(self) -> str:
        """The next character after whitespace ('' at the end)."""
        while True:
            self.pos = _WHITESPACE.match(self.text, self.pos).end()  # type: ignore[union-attr]
            if self.pos < len(self.text):
                return self.text[self.pos]
            if not self.more():
                return ""

    def expect(self, chars: str) -> str:
        found = self.peek()
        if not found or found not in chars:
            where = f"{found!r}" if found else "the end"
            raise JSONStreamError(f"expected one of {chars!r}, found {where}")
        self.pos += 1
        return found

    def value(self) -> Any:
        """The next JSON value; read further while it is incomplete."""
        self.peek()
        while True:
            try:
                value, end = _DECODER.raw_decode(self.text, self.pos)
            except RecursionError:
                raise JSONStreamError("invalid JSON: nested too deeply") from None
            except json.JSONDecodeError as e:
                # Incomplete or wrong: only more text (or its end) tells which.
                if not self.more(len(self.text) - self.pos):
                    raise JSONStreamError(f"invalid JSON: {e}") from None
                continue
            # A number (or literal) that ends the text so far may go on in the next chunk.
            if end < len(self.text) or self.eof:
                self.pos = end
                return value
            self.more()


def scan_object(
    source: IO[bytes], big_arrays: frozenset[str], chunk: int = CHUNK
) -> Iterator[Event]:
    """The members of the JSON object in ``source``; the arrays named in ``big_arrays``
    item by item. ``JSONStreamError`` when the text is not a JSON object."""
    text = _Text(source, chunk)
    if text.peek() != "{":
        raise JSONStreamError("not a JSON object")
    text.pos += 1
    if text.peek() == "}":
        text.pos += 1
    else:
        while True:
            key = text.value()
            if not isinstance(key, str):
                raise JSONStreamError("an object key that is not a string")
            text.expect(":")
            if key in big_arrays and text.peek() == "[":
                text.pos += 1
                yield key, [], False  # the member; its items follow
                if text.peek() == "]":
                    text.pos += 1
                else:
                    while True:
                        yield key, text.value(), True
                        if text.expect(",]") == "]":
                            break
            else:
                yield key, text.value(), False
            if text.expect(",}") == "}":
                break
    if text.peek():
        raise JSONStreamError("extra data after the JSON object")
