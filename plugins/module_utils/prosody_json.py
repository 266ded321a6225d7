# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The JSON that Prosody's SQL storage keeps for table values (util/json.lua), read and written.

Prosody's layout: a table that is a pure sequence 1..n is a JSON array; any other table is an
object holding its string keys, plus ``"__array": [...]`` for the sequence part and
``"__hash": [k1, v1, k2, v2, ...]`` for every other key (integers outside the sequence,
booleans, floats, and the strings ``"__array"``/``"__hash"`` themselves). The empty table is ``{}``.

``decode`` follows Prosody's ``json.decode`` step by step, quirks included: escapes other than
``\\" \\\\ \\/ \\b \\f \\n \\r \\t \\uXXXX`` stay in the string literally (``"\\x"`` is backslash-x),
raw control characters and bytes that are not UTF-8 are taken as they are, ``\\uXXXX`` is UTF-8
encoded and a lone surrogate escape fails, numbers are whatever Lua's ``tonumber`` makes of the
run of ``[0-9.eE+-]`` (so ``1`` is an integer, ``1.0`` and ``1e2`` floats), ``__array`` and
``__hash`` are folded back (an object closed after a trailing comma is not folded, as in
Prosody). Where our model cannot follow or we keep more than Prosody does:

* ``null`` is Prosody's ``json.null``, an empty table with a metatable: it reads as ``{}``.
* A table or ``null`` used as a ``__hash`` key cannot be a key in our model: JsonError.
* ``inf``, ``-inf``, ``nan`` and ``-nan`` (what Prosody's encoder writes for those floats) are
  read as the floats they stand for; Prosody's own decoder rejects the whole text.
* Nesting is limited to MAX_DEPTH tables (Prosody recurses until its Lua stack runs out).

``encode`` writes text that Prosody's ``json.decode`` reads as exactly the value given:

* Floats are written as Python's shortest round-trip text (``0.30000000000000004``,
  ``1e+16``, ``-0.0``), which always holds a ``.`` or an exponent so Lua reads a float back.
  Prosody writes ``%.14g`` and loses precision (``0.1 + 0.2`` comes back as ``0.3``).
* Infinities are written ``1e999`` and ``-1e999``, which Lua's ``tonumber`` reads as ``±inf``;
  Prosody writes ``inf``, which its decoder cannot read.
* NaN raises EncodeError: no JSON text makes Prosody's decoder produce NaN (Prosody writes
  ``-nan`` and then cannot read the value back at all).
* Strings are written with ``"``, ``\\`` and the control characters U+0000-U+001F escaped and
  every other byte raw, as Prosody does; bytes that are not UTF-8 (lone surrogates in our
  strings) stay lone surrogates in the returned text, for the caller to encode with
  ``surrogateescape``. NUL is ``\\u0000``, so the text never holds a raw NUL.
* Keys are in a fixed order (string keys by their bytes, then ``__hash`` keys false, true,
  numbers ascending, special strings), where Prosody follows ``pairs``.
* A None value in a table is an absent key (Lua's nil); a top-level None raises EncodeError.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from .errors import DecodeError, EncodeError
from .luadata import BoolKey

# Real values nest a few levels; the bound keeps recursion far from Python's limit.
MAX_DEPTH = 256

LUA_INT_MIN = -(2**63)
LUA_INT_MAX = 2**63 - 1

# The texts Lua's tostring gives non-finite floats; tonumber refuses them all.
PROSODY_NONFINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan, "-nan": -math.nan}


class JsonError(DecodeError):
    """JSON text that Prosody's decoder would not read, or that our model cannot hold."""


# -- Lua numbers ------------------------------------------------------------------------------

_LUA_SPACE = " \t\n\v\f\r"
_DEC_INT = re.compile(r"([+-]?)([0-9]+)")
_HEX_INT = re.compile(r"([+-]?)0[xX]([0-9a-fA-F]+)")
_DEC_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_HEX_FLOAT = re.compile(r"[+-]?0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)(?:[pP][+-]?[0-9]+)?")


def lua_tonumber(text: str) -> int | float | None:
    """What Lua 5.4's ``tonumber(text)`` returns for a string (None where it returns nil)."""
    core = text.strip(_LUA_SPACE)
    match = _DEC_INT.fullmatch(core)
    if match:
        digits = match.group(2).lstrip("0") or "0"
        limit = LUA_INT_MAX + (match.group(1) == "-")
        # Lua reads a decimal integer that overflows as a float instead.
        if len(digits) <= 19 and int(digits) <= limit:
            return -int(digits) if match.group(1) == "-" else int(digits)
        return float(core)
    match = _HEX_INT.fullmatch(core)
    if match:
        # Hexadecimal integers wrap around modulo 2^64 in Lua.
        value = int(match.group(2)[-16:], 16)
        if match.group(1) == "-":
            value = -value
        value %= 2**64
        return value - 2**64 if value > LUA_INT_MAX else value
    if _DEC_FLOAT.fullmatch(core):
        return float(core)
    if _HEX_FLOAT.fullmatch(core):
        try:
            return float.fromhex(core)
        except OverflowError:
            return -math.inf if core.startswith("-") else math.inf
    return None


def number_text(value: int | float) -> str:
    """Text for a number that Lua's ``tonumber`` reads back as exactly that integer or float."""
    if isinstance(value, int):
        if not LUA_INT_MIN <= value <= LUA_INT_MAX:
            raise EncodeError(f"integer {value} does not fit in a Lua integer")
        return str(value)
    if math.isnan(value):
        raise EncodeError("NaN cannot be stored: Prosody has no text it reads back as NaN")
    if math.isinf(value):
        return "1e999" if value > 0 else "-1e999"
    return repr(value)


def table_key(key: Any) -> Any:
    """A key as Lua holds it: integral floats become integers, booleans BoolKey."""
    if isinstance(key, bool):
        return BoolKey(key)
    if isinstance(key, float) and key.is_integer() and LUA_INT_MIN <= key <= LUA_INT_MAX:
        return int(key)
    return key


# -- encoding ---------------------------------------------------------------------------------

_SPECIAL_KEYS = ("__array", "__hash")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_NEEDS_ESCAPE = re.compile('["\\\\\x00-\x1f]')


def _escape_char(match: re.Match[str]) -> str:
    char = match.group(0)
    return _ESCAPES.get(char) or f"\\u{ord(char):04X}"


def _raw(text: str) -> bytes:
    """The Lua bytes of a model string (invalid UTF-8 carried as lone surrogates)."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as exc:
        raise EncodeError(f"string {text[:40]!r} holds a character that is not a byte: {exc.reason}") from None


def _quote(text: str) -> str:
    if text.isascii():  # no surrogates to refuse, and most need no escape
        return '"' + (_NEEDS_ESCAPE.sub(_escape_char, text) if _NEEDS_ESCAPE.search(text) else text) + '"'
    _raw(text)
    return '"' + _NEEDS_ESCAPE.sub(_escape_char, text) + '"'


def _first(item: tuple[str, Any]) -> str:
    return item[0]


def _hash_order(key: Any) -> tuple[int, Any]:
    if isinstance(key, BoolKey):
        return (0, key.value)
    if isinstance(key, str):
        return (2, _raw(key))
    return (1, key)


def _split_table(table: dict[Any, Any]) -> tuple[list[tuple[str, Any]], list[Any], dict[Any, Any]]:
    """Prosody's three parts of a table: string members, the sequence 1..n, every other key."""
    members: list[tuple[str, Any]] = []
    others: dict[Any, Any] = {}
    for key, value in table.items():
        if value is None:
            continue
        if isinstance(key, str) and key not in _SPECIAL_KEYS:
            members.append((key, value))
            continue
        lkey = table_key(key)
        if isinstance(lkey, float) and math.isnan(lkey):
            raise EncodeError("NaN cannot be a table key")
        if not isinstance(lkey, (int, float, str, BoolKey)):
            raise EncodeError(f"a {type(key).__name__} cannot be a table key")
        if lkey in others:
            raise EncodeError(f"table key {key!r} given twice")
        others[lkey] = value
    sequence = []
    while len(sequence) + 1 in others:
        sequence.append(others.pop(len(sequence) + 1))
    if "".join([key for key, _value in members]).isascii():
        members.sort(key=_first)  # ASCII text sorts as its bytes do
    else:
        members.sort(key=lambda item: _raw(item[0]))
    return members, sequence, others


def _table_parts(table: dict[Any, Any]) -> tuple[list[tuple[str, Any]], str]:
    """A table's JSON as (text before each item, item) pairs and the text after the last."""
    members, sequence, others = _split_table(table)
    if sequence and not members and not others:
        return [("," if index else "[", item) for index, item in enumerate(sequence)], "]"
    parts: list[tuple[str, Any]] = []
    opener, closer = "{", ""
    for key, item in members:
        parts.append((opener + _quote(key) + ":", item))
        opener = ","
    flat: list[Any] = []
    for key in sorted(others, key=_hash_order):
        flat += [key.value if isinstance(key, BoolKey) else key, others[key]]
    for name, items in (("__hash", flat), ("__array", sequence)):
        if items:
            parts.append((f'{closer}{opener}"{name}":[', items[0]))
            parts.extend((",", item) for item in items[1:])
            opener, closer = ",", "]"
    return parts, closer + "}" if parts else "{}"


def _encode(value: Any, out: list[str], depth: int) -> None:
    # One Python frame per table level, so MAX_DEPTH bounds the recursion.
    if value is True or value is False:
        out.append("true" if value else "false")
    elif isinstance(value, (int, float)):
        out.append(number_text(value))
    elif isinstance(value, str):
        out.append(_quote(value))
    elif isinstance(value, dict):
        if depth >= MAX_DEPTH:
            raise EncodeError(f"tables nested deeper than {MAX_DEPTH} levels")
        parts, suffix = _table_parts(value)
        for prefix, item in parts:
            out.append(prefix)
            _encode(item, out, depth + 1)
        out.append(suffix)
    elif value is None:
        raise EncodeError("nil cannot be encoded as a JSON value")
    else:
        raise EncodeError(f"a {type(value).__name__} is not a Lua value that JSON can hold")


def encode(value: Any) -> str:
    """JSON text that Prosody's ``json.decode`` reads back as exactly ``value``."""
    out: list[str] = []
    _encode(value, out, 0)
    return "".join(out)


# -- decoding ---------------------------------------------------------------------------------

# Prosody first rewrites every backslash escape except \uXXXX into \uXXXX (and leaves unknown
# escapes alone), then reads strings up to the next raw quote.
_FIRST_ESCAPE = {
    b'"': b"\\u0022",
    b"\\": b"\\u005c",
    b"/": b"\\u002f",
    b"b": b"\\u0008",
    b"f": b"\\u000C",
    b"n": b"\\u000A",
    b"r": b"\\u000D",
    b"t": b"\\u0009",
}
_BACKSLASH_PAIR = re.compile(rb"\\(.)", re.DOTALL)
_SURROGATE_PAIR = re.compile(rb"\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}")
_U_ESCAPE = re.compile(rb"\\u.{0,4}", re.DOTALL)
_HEX4 = re.compile(rb"[0-9a-fA-F]{4}")
_NOT_SPACE = re.compile(rb"[^ \t\r\n]")
_NUMBER = re.compile(rb"[0-9.eE+-]+")
_NONFINITE = re.compile(rb"-?(?:inf|nan)")


def _first_escape(match: re.Match[bytes]) -> bytes:
    return _FIRST_ESCAPE.get(match.group(1), match.group(0))


def _pair_to_utf8(match: re.Match[bytes]) -> bytes:
    lead = int(match.group(0)[2:6], 16)
    trail = int(match.group(0)[8:12], 16)
    return chr(0x10000 + (lead - 0xD800) * 0x400 + (trail - 0xDC00)).encode("utf-8")


_NO_KEY = object()
_CONTAINERS = (b"{", b"[")
_WORDS = {b"n": (b"null", {}), b"t": (b"true", True), b"f": (b"false", False)}


class _Reader:
    """One decode: Prosody's reader, run over the escape-rewritten bytes."""

    def __init__(self, data: bytes, source: str) -> None:
        self.data = _BACKSLASH_PAIR.sub(_first_escape, data)
        self.source = source
        self.table_key = False

    def fail(self, reason: str) -> JsonError:
        return JsonError(f"invalid JSON: {reason}", self.source)

    def skip(self, index: int) -> int:
        match = _NOT_SPACE.search(self.data, index)
        return match.start() if match else index

    def byte(self, index: int) -> bytes:
        return self.data[index : index + 1]

    def value(self, index: int, depth: int) -> tuple[Any, int]:
        """The value starting at ``index`` (after whitespace)."""
        index = self.skip(index)
        if self.byte(index) in _CONTAINERS:
            return self.table(index, depth)
        return self.scalar(index)

    def scalar(self, index: int) -> tuple[Any, int]:
        head = self.byte(index)
        if head == b'"':
            return self.string(index)
        nonfinite = _NONFINITE.match(self.data, index)
        if nonfinite:
            return PROSODY_NONFINITE[nonfinite.group(0).decode()], nonfinite.end()
        if head.isdigit() or head == b"-":
            match = _NUMBER.match(self.data, index)
            if match is None:  # cannot happen: _NUMBER matches any digit or minus sign
                raise self.fail("number expected")
            number = lua_tonumber(match.group(0).decode("ascii"))
            if number is None:
                raise self.fail(f"bad number {match.group(0)[:40].decode('ascii')!r}")
            return number, match.end()
        if head in _WORDS:
            word, result = _WORDS[head]
            if self.data.startswith(word, index):
                return result, index + len(word)
        raise self.fail("value expected")

    def string(self, index: int) -> tuple[str, int]:
        end = self.data.find(b'"', index + 1)
        if end < 0:
            raise self.fail("unterminated string")
        raw = self.data[index + 1 : end]
        if b"\\u" in raw:
            raw = self.unescape(raw)
        return raw.decode("utf-8", "surrogateescape"), end + 1

    def unescape(self, raw: bytes) -> bytes:
        bad: list[bytes] = []

        def one(match: re.Match[bytes]) -> bytes:
            digits = match.group(0)[2:]
            code = int(digits, 16) if _HEX4.fullmatch(digits) else 0xD800
            if 0xD800 <= code <= 0xDFFF:
                bad.append(match.group(0))
                return b""
            return chr(code).encode("utf-8")

        raw = _U_ESCAPE.sub(one, _SURROGATE_PAIR.sub(_pair_to_utf8, raw))
        if bad:
            raise self.fail(f"invalid escape {bad[0].decode('utf-8', 'replace')!r}")
        return raw

    def table(self, index: int, depth: int) -> tuple[dict[Any, Any], int]:
        """An array or object at ``index``; calls itself directly, one frame per level."""
        if depth >= MAX_DEPTH:
            raise self.fail(f"tables nested deeper than {MAX_DEPTH} levels")
        is_object = self.data[index] == ord("{")
        table: dict[Any, Any] = {}
        while True:
            index = self.skip(index + 1)
            head = self.byte(index)
            key: Any = len(table) + 1
            if is_object:
                if head != b'"':
                    if head == b"}":
                        # Only for {} or after a trailing comma, where Prosody does not fold.
                        return table, index + 1
                    raise self.fail("key expected")
                key, index = self.string(index)
                index = self.skip(index)
                if self.byte(index) != b":":
                    raise self.fail("':' expected")
                index = self.skip(index + 1)
                head = self.byte(index)
            elif head == b"]":
                if table:
                    raise self.fail("value expected after ','")
                return table, index + 1
            if head in _CONTAINERS:
                table[key], index = self.table(index, depth + 1)
            else:
                table[key], index = self.scalar(index)
            index = self.skip(index)
            head = self.byte(index)
            if head == (b"}" if is_object else b"]"):
                return (self.fold(table) if is_object else table), index + 1
            if head != b",":
                raise self.fail("',' or '}' expected" if is_object else "',' or ']' expected")

    def ipairs(self, value: Any, name: str) -> list[Any]:
        """Lua's ipairs over a decoded value: strings and tables without [1] give nothing."""
        if isinstance(value, str):
            return []
        if not isinstance(value, dict):
            raise self.fail(f"{name} is not a table")
        items = []
        while len(items) + 1 in value:
            items.append(value[len(items) + 1])
        return items

    def fold(self, table: dict[Any, Any]) -> dict[Any, Any]:
        """Prosody's _fixobject: __array items go to 1..n, then __hash pairs to their keys."""
        # A false __array/__hash is left in place, as Prosody tests them for truth.
        if table.get("__array", False) is not False:
            # Every key so far is a string, so Prosody's table.insert counts from 1.
            for position, item in enumerate(self.ipairs(table.pop("__array"), "__array"), 1):
                table[position] = item
        if table.get("__hash", False) is not False:
            key: Any = _NO_KEY
            for item in self.ipairs(table.pop("__hash"), "__hash"):
                if key is _NO_KEY:
                    key = item
                    continue
                if isinstance(key, dict):
                    # Valid for Prosody, so any syntax error later in the text comes first.
                    self.table_key = True
                else:
                    table[table_key(key)] = item
                key = _NO_KEY
        return table


def decode(text: str | bytes, source: str) -> Any:
    """The value Prosody's ``json.decode`` reads from ``text``; JsonError names ``source``."""
    if isinstance(text, str):
        try:
            data = text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError as exc:
            raise JsonError(f"text holds a character that is not a byte: {exc.reason}", source) from None
    else:
        data = bytes(text)
    reader = _Reader(b"", source)
    value = _fast(data, reader)
    if value is _SLOW:
        reader = _Reader(data, source)
        value, index = reader.value(0, 0)
        if _NOT_SPACE.search(reader.data, index):
            raise reader.fail("garbage after the value")
    if reader.table_key:
        raise JsonError("a table (or null) is used as a key in __hash, which our model cannot hold", source)
    return value


# The fast path -------------------------------------------------------------------------------
# Python's json module reads most of what Prosody writes (roster items, a few dozen bytes each,
# 7x faster than _Reader), and on standard JSON it agrees with Prosody's decoder but for what is
# sent to _Reader instead: a \uD800-\uDFFF escape (a lone one fails in Prosody, where json makes
# a lone surrogate, our mark for a byte that is not UTF-8), NaN and Infinity (json's extensions),
# and tables nested deeper than MAX_DEPTH. Whatever json refuses goes to _Reader too, which
# accepts Prosody's quirks or gives its error.
_SLOW: Any = object()
_SURROGATE_ESCAPE = re.compile(rb"\\[uU][dD][89a-fA-F]")


class _Slow(Exception):
    """The fast path cannot answer: _Reader decides."""


def _refuse(_word: str) -> Any:
    raise _Slow


def _lua_int(text: str) -> int | float:
    """An integer as Lua's tonumber reads it: one past Lua's range becomes a float."""
    return int(text) if len(text) < 19 else lua_tonumber(text)  # type: ignore[return-value]


_JSON = json.JSONDecoder(parse_int=_lua_int, parse_constant=_refuse, strict=False)


def _fast(data: bytes, reader: _Reader) -> Any:
    """The decoded value by Python's json module, or _SLOW when it must be left to _Reader."""
    if b"\\u" in data and _SURROGATE_ESCAPE.search(data):
        return _SLOW
    try:
        return _as_lua(_JSON.decode(data.decode("utf-8", "surrogateescape")), 0, reader)
    except (ValueError, _Slow, RecursionError):
        return _SLOW


def _as_lua(value: Any, depth: int, reader: _Reader) -> Any:
    """json's value in our model, innermost first as Prosody folds: an array is a table 1..n,
    null an empty table, an object's __array and __hash folded in (reader.fold)."""
    kind = value.__class__
    if kind is not dict and kind is not list:
        return {} if value is None else value
    if depth >= MAX_DEPTH:
        raise _Slow
    if kind is list:
        return {
            i: _as_lua(item, depth + 1, reader) if item.__class__ in _NESTED else item
            for i, item in enumerate(value, 1)
        }
    for key, item in value.items():
        if item.__class__ in _NESTED:
            value[key] = _as_lua(item, depth + 1, reader)
    return reader.fold(value) if "__array" in value or "__hash" in value else value


_NESTED = (dict, list, type(None))
