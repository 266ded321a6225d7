# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Archive (``.list``) files read by shape: the fast path of ``luadata.loads_list``.

mod_storage_internal writes each archive item as ``item(<table>);`` and the items of a store
come in a few shapes: the same keys, nesting and layout, only string, number and boolean
values differ. A *shape* is that text with every such value cut out. It is learnt from an item
the general reader (``luadata._parse``) has just read, turned into one compiled regex (one group
per value) plus an assembly plan (per table, its keys and which values fill them), and checked
once: rebuilding that item from the regex must give exactly what the general reader gave. Then
each following item of a known shape costs one regex match and a few dict constructions.

The general reader stays the reference: an item that matches no known shape, or whose values
need anything but the conversions below, is read by it (one ``item(...)`` statement at a time,
from the same byte offset), so results and errors, with their line numbers, are its own. Value
conversions follow it exactly: strings keep every byte (escapes decoded as ``_unescape`` does;
plain text taken from the file decoded once with ``surrogateescape``), a decimal numeral is an
integer when it has no ``.`` or exponent and fits (else a float), ``true``/``false`` are
booleans. Anything else (``nil``, hex or non-finite numbers, numeric keys, comments, other
quoting) never becomes part of a shape.

Memory and time are bounded: at most ``MAX_SHAPES`` shapes are kept (oldest dropped first), each
of at most ``MAX_SLOTS`` values, ``MAX_TABLES`` tables and ``MAX_LITERAL`` characters besides
its values, and at most ``MAX_NEW_SHAPES`` are learnt per file. The shapes are kept per process
(parallel.py's workers are processes) and are not meant to be shared by threads.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable

from .luadata import _BODY_DQ, _FLOAT, _INT_MAX, _LIST_START, _parse, _Syntax, _unescape

MAX_SHAPES = 128  # shapes kept per process (a store has a handful per Prosody restart)
MAX_NEW_SHAPES = 16  # shapes learnt per file at most: a file of ever new shapes costs no more
MAX_SLOTS = 256  # values in one shape: bigger items are rare, and read by the general reader
MAX_TABLES = 64
MAX_LITERAL = 4096  # characters of a shape's text outside its values
RECENT = 8  # shapes tried on each item, most frequent first, before the general reader takes it
MAX_RUNS = 4096  # escape runs cached
MAX_RUN = 64  # characters of an escape run worth caching

_WS = "[ \t\n\r\f\v]"
_STRING = '"(' + _BODY_DQ.decode("ascii") + ')"'
_NUMBER = "(" + _FLOAT.decode("ascii") + ")(?![0-9A-Za-z_.])"
_BOOLEAN = "(true|false)(?![0-9A-Za-z_])"
_SLOT_PATTERNS = {"string": _STRING, "number": _NUMBER, "boolean": _BOOLEAN}

# The tokens of a learnable item; m.lastindex names the kind.
_TOKEN = re.compile(
    f"({_WS}+)"  # 1
    r"|\[" + _STRING + rf"\]{_WS}*={_WS}*"  # 2 ["key"] =
    "|"
    + _STRING  # 3
    + "|"
    + _NUMBER  # 4
    + "|"
    + _BOOLEAN  # 5
    + r"|(\{)|(\})|([;,])"  # 6 7 8
    + rf"|(item{_WS}*\()"  # 9
    + rf"|(\){_WS}*;)"  # 10
)
_SLOT_KINDS = {3: "string", 4: "number", 5: "boolean"}
_SKIP_WS = re.compile(f"{_WS}*")

# Prosody's escapes: \ddd and the named ones. A string whose backslashes all start one of these
# (no \x, \u{}, \z, escaped newline or invalid escape) is decoded run by run, each run of
# escapes looked up in _RUNS; anything else goes through luadata's _unescape.
_ESCAPE = r"\\(?:[0-9]{1,3}|[abfnrtv\\\"'])"
_ESCAPE_RUN = re.compile(f"({_ESCAPE}(?:{_ESCAPE})*)")  # a backslash first: scans fast
_OTHER_ESCAPE = re.compile(r"\\[^0-9abfnrtv\\\"']")


class _Runs(dict):
    """Escape runs (``\\195\\169``) to the text they stand for, computed on first use, bounded."""

    def __missing__(self, run: str) -> str:
        text = _unescape(run.encode("ascii"))
        if len(self) < MAX_RUNS and len(run) <= MAX_RUN:
            self[run] = text
        return text


_RUNS = _Runs()


def _unescape_text(raw: str) -> str:
    """A string's value from its text between the quotes, as ``luadata._unescape`` gives it."""
    if raw.isascii() and not _OTHER_ESCAPE.search(raw):
        # Every byte outside an escape run is ASCII, so a run decodes alone as it does in the whole.
        parts = _ESCAPE_RUN.split(raw)
        parts[1::2] = map(_RUNS.__getitem__, parts[1::2])
        return "".join(parts)
    return _unescape(raw.encode("utf-8", "surrogateescape"))


def _number(raw: str) -> int | float:
    """A decimal numeral's value, as the general reader gives it."""
    if "." in raw or "e" in raw or "E" in raw:
        return float(raw)
    value = int(raw)
    return value if -_INT_MAX <= value <= _INT_MAX else float(raw)  # Lua: an overflowing integer is a float


class _Shape:
    """The regex and assembly plan of one item shape."""

    __slots__ = ("build_values", "hits", "match")

    def __init__(self, pattern: str, kinds: list[str], tables: list[list[tuple[Any, int]]]) -> None:
        self.match = re.compile(pattern).match
        self.hits = 0  # items read since the last shape was learnt: orders the recent shapes
        self.build_values = _builder(kinds, tables)

    def build(self, m: re.Match[str]) -> dict[Any, Any]:
        """The item this match of the shape's regex stands for (ValueError or _Syntax: let the general reader do it)."""
        return self.build_values(m.groups())


def _builder(kinds: list[str], tables: list[list[tuple[Any, int]]]) -> Callable[[tuple[str, ...]], dict[Any, Any]]:
    """A function from a match's groups to the item: one expression, compiled once per shape.

    A loop over the plan cost about a tenth of the file's reading. The generated source holds only
    indexes and fixed names; the shape's keys are taken from a tuple, never written into the
    source: nothing read from a file is ever compiled.
    """
    exprs = []
    for i, kind in enumerate(kinds):
        if kind == "string":
            # Only strings can hold a backslash; a string without one is its own value.
            exprs.append(f"(g[{i}] if '\\\\' not in g[{i}] else u(g[{i}]))")
        elif kind == "number":
            exprs.append(f"n(g[{i}])")
        else:
            exprs.append(f"(g[{i}] == 'true')")
    keys: list[Any] = []
    for fields in tables:  # children first, each table's text made from those before it
        items = []
        for key, source in fields:
            keys.append(key)
            items.append(f"k[{len(keys) - 1}]: {exprs[source]}")
        exprs.append("{" + ", ".join(items) + "}")
    source = f"def build(g):\n    return {exprs[-1]}\n"
    namespace: dict[str, Any] = {"u": _unescape_text, "n": _number, "k": tuple(keys)}
    exec(compile(source, "<luashape>", "exec"), namespace)  # pylint: disable=exec-used
    return namespace["build"]


_SHAPES: dict[str, _Shape | None] = {}  # by pattern; None: a shape that failed its check
_RECENT: list[_Shape] = []


def _use(shape: _Shape) -> None:
    """Put a newly learnt shape first among the recent ones; their order is then learnt anew."""
    _RECENT[:] = ([shape] + [recent for recent in _RECENT if recent is not shape])[:RECENT]
    for recent in _RECENT:
        recent.hits = 0


def _read_known(text: str, pos: int) -> tuple[Any, int] | None:
    """(item, end) when the item at ``pos`` has a recent shape, else None."""
    for index, shape in enumerate(_RECENT):
        m = shape.match(text, pos)
        if m is not None:
            try:
                value = shape.build(m)
            except (ValueError, OverflowError, _Syntax):
                return None  # the general reader will tell what is wrong, or read it its way
            shape.hits += 1
            if index and shape.hits > _RECENT[index - 1].hits:
                # The shapes settle in order of frequency, the fewest failed matches for a mix.
                _RECENT[index - 1], _RECENT[index] = shape, _RECENT[index - 1]
            return value, m.end()
    return None


def _skeleton(text: str, start: int, stop: int) -> tuple[str, list[str], list[list[tuple[Any, int]]]] | None:
    """(pattern, slot kinds, table plans) of the one-item statement ``text[start:stop]``, None if not learnable.

    The statement was read by the general reader, so it is valid: this only has to see its parts.
    """
    pieces: list[str] = []  # regex source
    literal: list[str] = []  # text since the last slot
    kinds: list[str] = []
    closed: list[list[tuple[Any, tuple[str, int]]]] = []  # each table's fields (key or None, source)
    stack: list[tuple[list[tuple[Any, tuple[str, int]]], Any]] = []  # open tables: (fields, own key)
    key: Any = None
    state = "start"  # start, value (inside item(...)), end (after the table), done
    size = 0  # characters of literal text
    pos = start
    while pos < stop:
        m = _TOKEN.match(text, pos)
        if m is None or m.end() > stop:
            return None
        pos = m.end()
        kind = m.lastindex
        if kind == 1:
            literal.append(m.group())
        elif kind == 9 and state == "start":
            literal.append(m.group())
            state = "value"
        elif kind == 10 and state == "end":
            literal.append(m.group())
            state = "done"
        elif state != "value":
            return None
        elif kind == 8:
            literal.append(m.group())
        elif kind == 2:
            try:
                key = _unescape(m.group(2).encode("utf-8", "surrogateescape"))
            except _Syntax:
                return None
            literal.append(m.group())
        elif kind == 6:
            stack.append(([], key))
            key = None
            literal.append("{")
        elif kind == 7:
            fields, own_key = stack.pop()
            closed.append(fields)
            if stack:
                stack[-1][0].append((own_key, ("table", len(closed) - 1)))
            else:
                state = "end"
            literal.append("}")
        elif not stack:
            return None  # a scalar item
        else:
            size += sum(map(len, literal))
            pieces.append(re.escape("".join(literal)))
            literal = []
            pieces.append(_SLOT_PATTERNS[_SLOT_KINDS[kind]])
            stack[-1][0].append((key, ("slot", len(kinds))))
            kinds.append(_SLOT_KINDS[kind])
            key = None
        if len(kinds) > MAX_SLOTS or len(closed) + len(stack) > MAX_TABLES or size > MAX_LITERAL:
            return None
    if state != "done" or size + sum(map(len, literal)) > MAX_LITERAL:
        return None
    pieces.append(re.escape("".join(literal)))
    pieces.append(_WS + "*")  # the newline before the next item
    return "".join(pieces), kinds, [_table_plan(fields, len(kinds)) for fields in closed]


def _table_plan(fields: list[tuple[Any, tuple[str, int]]], n_slots: int) -> list[tuple[Any, int]]:
    """(key, value index) of a table's fields in the order the general reader stores them:
    positional fields first (keys 1, 2...), then keyed ones in order (a key given twice keeps its
    first place and its last value, as storing them one by one does)."""
    positional = [source for key, source in fields if key is None]
    keyed = [(key, source) for key, source in fields if key is not None]
    ordered = list(enumerate(positional, 1)) + keyed
    return [(key, index if where == "slot" else n_slots + index) for key, (where, index) in ordered]


def _learn(text: str, start: int, stop: int, item: Any) -> tuple[_Shape | None, bool]:
    """(shape, whether it is new) of the item the general reader read from ``text[start:stop]``;
    the shape is None when the item has none that can be used."""
    if type(item) is not dict:  # pylint: disable=unidiomatic-typecheck
        return None, False
    skeleton = _skeleton(text, start, stop)
    if skeleton is None:
        return None, False
    pattern, kinds, tables = skeleton
    if pattern in _SHAPES:
        return _SHAPES[pattern], False
    shape: _Shape | None
    try:
        shape = _Shape(pattern, kinds, tables)
        m = shape.match(text, start)
        ok = m is not None and _identical(shape.build(m), item)
    except (ValueError, OverflowError, _Syntax, SyntaxError, RecursionError):
        shape, ok = None, False
    if not ok:  # not expected: then this shape is left to the general reader for good
        shape = None
    if len(_SHAPES) >= MAX_SHAPES:
        del _SHAPES[next(iter(_SHAPES))]  # the oldest
    _SHAPES[pattern] = shape
    return shape, True


def _identical(a: Any, b: Any) -> bool:
    """Equal as Lua data and as Python objects: same types, same key order, same float bits."""
    if type(a) is not type(b):
        return False
    if type(a) is dict:  # pylint: disable=unidiomatic-typecheck
        return len(a) == len(b) and all(
            type(ka) is type(kb) and ka == kb and _identical(va, vb) for (ka, va), (kb, vb) in zip(a.items(), b.items())
        )
    if type(a) is float:  # pylint: disable=unidiomatic-typecheck
        return (a == b and math.copysign(1.0, a) == math.copysign(1.0, b)) or (math.isnan(a) and math.isnan(b))
    return a == b


class _Offsets:
    """Byte offsets in a file of positions in its decoded text (the same numbers for a file where
    each byte is one character, as Prosody's ASCII files)."""

    def __init__(self, data: bytes, text: str) -> None:
        self.data = data
        self.text = text
        self.same = len(data) == len(text)
        self.at_text = self.at_byte = 0  # the last pair converted; positions only move forward

    def to_byte(self, pos: int) -> int:
        if not self.same:
            self.at_byte += len(self.text[self.at_text : pos].encode("utf-8", "surrogateescape"))
            self.at_text = pos
            return self.at_byte
        return pos

    def to_text(self, pos: int) -> int:
        if not self.same:
            # Both ends are right after an ASCII character, where text and bytes split alike.
            self.at_text += len(self.data[self.at_byte : pos].decode("utf-8", "surrogateescape"))
            self.at_byte = pos
            return self.at_text
        return pos


def read_list(data: bytes) -> list[Any]:
    """The items of a ``.list`` file, as ``luadata._parse(data, _LIST_START)`` reads them (and its errors)."""
    text = data.decode("utf-8", "surrogateescape")
    offsets = _Offsets(data, text)
    items: list[Any] = []
    new_shapes = 0
    end = len(text)
    pos = _SKIP_WS.match(text).end()
    while pos < end:
        known = _read_known(text, pos)
        if known is not None:
            items.append(known[0])
            pos = known[1]
            continue
        # The general reader takes one statement from here (raising what it raises)...
        read, stop = _parse(data, _LIST_START, offsets.to_byte(pos), one_statement=True)
        items.extend(read)
        stop = offsets.to_text(stop)
        # ...and its shape, if it has one, is tried on the items that follow (a file that keeps
        # bringing new shapes is left to the general reader).
        if len(read) == 1 and new_shapes < MAX_NEW_SHAPES:
            shape, new = _learn(text, pos, stop, read[0])
            new_shapes += new
            if shape is not None:
                _use(shape)
        pos = _SKIP_WS.match(text, stop).end()
    return items
