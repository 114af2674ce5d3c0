"""A JSON object read member by member from a byte stream, in bounded memory.

A Keylime runtime policy of a million paths is a 100 MB JSON document; :func:`json.load` would
hold all of it (and ten times that as objects). :class:`JsonStream` holds a window of the text:
the caller walks the top-level object with :meth:`JsonStream.members`, reads small values
whole with :meth:`JsonStream.value` (each at most ``max_item`` characters) and walks a large
member object (``digests``) the same way, one member at a time. Duplicate keys are refused at
every level (Python's :mod:`json` would keep the last one silently). Errors are one
:class:`~pyverity.errors.FormatError` line naming ``what`` and the offset.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from typing import Any, BinaryIO

from pyverity.errors import FormatError
from pyverity.manifest.model import _DuplicateKeyError, _no_duplicates

__all__ = ["JsonStream"]

_CHUNK = 1 << 20
_WS = " \t\n\r"


class JsonStream:
    def __init__(self, stream: BinaryIO, what: str, *, max_item: int = 16 << 20) -> None:
        self._stream, self.what, self.max_item = stream, what, max_item
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self._buf = ""
        self._pos = 0
        self._base = 0  # characters dropped before _buf
        self._eof = False
        self._json = json.JSONDecoder(object_pairs_hook=_no_duplicates)

    def error(self, why: str) -> FormatError:
        return FormatError(f"{self.what}: {why} (at character {self._base + self._pos})")

    def _fill(self) -> bool:
        if self._eof:
            return False
        data = self._stream.read(_CHUNK)
        try:
            text = self._decoder.decode(data, final=not data)
        except UnicodeDecodeError:
            raise self.error("not UTF-8 text") from None
        if not data:
            self._eof = True
        if self._pos > _CHUNK:
            self._base += self._pos
            self._buf, self._pos = self._buf[self._pos :], 0
        self._buf += text
        return True

    def _ws(self) -> str:
        """Skip whitespace; the next character, or '' at the end."""
        while True:
            buf, pos = self._buf, self._pos
            while pos < len(buf) and buf[pos] in _WS:
                pos += 1
            self._pos = pos
            if pos < len(buf):
                return buf[pos]
            if not self._fill():
                return ""

    def punct(self, allowed: str) -> str:
        c = self._ws()
        if not c or c not in allowed:
            found = repr(c) if c else "the end"
            raise self.error(f"expected {' or '.join(repr(a) for a in allowed)}, found {found}")
        self._pos += 1
        return c

    def value(self) -> Any:
        """The next JSON value, whole (at most ``max_item`` characters)."""
        if not self._ws():
            raise self.error("expected a value, found the end")
        while True:
            try:
                obj, end = self._json.raw_decode(self._buf, self._pos)
            except _DuplicateKeyError as e:
                raise self.error(str(e)) from None
            except json.JSONDecodeError as e:
                if len(self._buf) - self._pos > self.max_item:
                    raise self.error(f"a value longer than {self.max_item} characters") from None
                if self._fill():
                    continue
                raise self.error(f"not JSON: {e.msg}") from None
            except RecursionError:
                raise self.error("nested too deeply") from None
            if end == len(self._buf) and self._fill():
                continue  # a number or literal may go on in the next chunk
            self._pos = end
            return obj

    def members(self, *, check_duplicates: bool = True) -> Iterator[str]:
        """The keys of the object that starts here; after each, the caller consumes its value
        (:meth:`value`, or :meth:`members` of a nested object). Duplicate keys are refused,
        unless ``check_duplicates`` is false (a large object whose caller indexes its keys on
        disk and finds duplicates there: a set of them here would grow with the object)."""
        self.punct("{")
        seen: set[str] | None = set() if check_duplicates else None
        if self._ws() == "}":
            self._pos += 1
            return
        while True:
            key = self.value()
            if not isinstance(key, str):
                raise self.error("an object key is not a string")
            if seen is not None:
                if key in seen:
                    raise self.error(f"duplicate key {key!r}")
                seen.add(key)
            self.punct(":")
            yield key
            if self.punct(",}") == "}":
                return

    def end(self) -> None:
        """Only whitespace may follow the top-level value."""
        if self._ws():
            raise self.error("text after the JSON document")
