# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Prosody's Lua-serialized data files (util.serialization, util.datamanager), read and written.

The Python model of a Lua value: nil is None, booleans are bool, integers int, floats float,
strings str (bytes that are not UTF-8 carried as lone surrogates, ``surrogateescape``, so every
byte is written back as it was), tables dict. Boolean table keys are BoolKey, since Python's
True == 1 would merge them with the integer key 1.

Reading: a strict, code-free reader of the text Prosody writes (``return <value>;`` files,
``item(<value>);`` archive files, plus the rest of Lua's literal syntax: comments, single-quoted
and long strings, every short-string escape, hex numerals, ``name = value`` fields). It follows
Lua 5.4's rules: a decimal integer numeral that does not fit in 64 bits is a float (so
``-9223372036854775808`` reads as a float), hex integers wrap around, integral float keys become
integer keys, a later field for the same key wins (positional fields are stored in batches of
50, as Lua's table constructor does), ``nil`` values vanish. Tables nest at most 127 deep, as
Prosody's serializer allows. A file outside that grammar (hand edits, older writers) is run in
the Lua sandbox of luasandbox.py instead (``sandbox=False`` makes that an error); LuaDataError
names the file and the line where the strict reader stopped when that fails too. The reader is
one compiled regex (``finditer``) driving an iterative state machine, with Prosody's frequent
shapes fused into single tokens; bench/bench_luadata.py measures it against the sandbox. Archive
files go through luashape.py first, which reads the items of a known shape itself and hands
every other item (one ``item(...)`` statement at a time) to this reader.

Writing: byte for byte what Prosody's ``util.serialization.serialize`` (default preset) writes
for the same table iterated in our key order: positional items 1..n first, then booleans (false,
true), numbers (ascending), strings (by their bytes). Two deliberate deviations keep every value
the same value when Lua reads it back:

* a float whose ``%.18g`` text has neither ``.`` nor an exponent (1.0, -0.0, 1e15) gets a
  ``.0`` suffix (``1.0``, ``-0.0``, ``1000000000000000.0``); Prosody writes ``1``/``-0``, which
  Lua reads back as an integer;
* the integer -2^63 is written as ``0x8000000000000000`` (Lua's hex integers wrap to it);
  Prosody writes ``-9223372036854775808``, which Lua reads back as a float.

``nil`` values inside tables are left out (a Lua table cannot hold them).

The writer appends the text of every field to one list, joined once per file. Tables of the
usual shape (positions 1..n in order, booleans, strings: stanzas, rosters, accounts) are written
without normalising each key; any other table takes the general way, which does. Key texts and
short string literals are cached (literals for one call: an archive's JIDs and attribute values
recur), and a string with bytes to escape is escaped by C loops (``str.translate``, or a split
into runs for long text), never a Python call per byte or run. test_luadata_writer.py holds the
earlier, plainer writer and checks that this one writes the same bytes; bench/bench_dump.py
measures it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

from .errors import DecodeError, EncodeError

MAX_DEPTH = 127  # util.serialization's maxdepth: deeper tables are an error on both sides
_INT_MAX = 2**63 - 1
_INT_MIN = -(2**63)


class BoolKey:
    """A boolean used as a table key (``[true] = ...``)."""

    __slots__ = ("value",)

    def __init__(self, value: bool) -> None:
        self.value = bool(value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BoolKey) and other.value is self.value

    def __hash__(self) -> int:
        return hash((BoolKey, self.value))

    def __repr__(self) -> str:
        return f"BoolKey({self.value})"


def lua_type(value: object) -> str:
    """The Lua type name of a value of our model, for messages (other objects: their class)."""
    if value is None:
        return "nil"
    if isinstance(value, (bool, BoolKey)):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "table"
    return type(value).__name__


class LuaDataError(DecodeError):
    """A Lua data file (or text) that neither the strict reader nor the sandbox could read."""

    def __init__(self, message: str, source: str | None = None) -> None:
        self.reason = message  # the message without the source prefix
        super().__init__(message, source)


class _Syntax(Exception):
    """Internal: where and why the strict reader stopped (the sandbox gets a try next)."""

    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.line = line


# ---------------------------------------------------------------------------------------------
# Reader

_WS = rb"[ \t\n\r\f\v]*"
_PLAIN = rb'[^"\\\n\r]*'
# Every alternative is unambiguous (z is not also "any other escape", \z's whitespace run is
# maximal) so that a failing match cannot backtrack exponentially.
_ESC_SEQ = rb"\\(?:z[ \t\n\r\f\v]*(?![ \t\n\r\f\v])|\r\n?|\n\r?|[^\r\nz])"
_BODY_DQ = rb'[^"\\\n\r]*(?:' + _ESC_SEQ + rb'[^"\\\n\r]*)*'
_BODY_SQ = rb"[^'\\\n\r]*(?:" + _ESC_SEQ + rb"[^'\\\n\r]*)*"
_END_NUM = rb"(?![0-9A-Za-z_.])"

# One alternative per token kind; ``m.lastindex`` (the last capture group to close) names the
# kind. Prosody's most frequent shapes are single tokens (``["k"] = "v";``, ``["k"] = {``,
# ``["k"] = 1.5;``, ``};``, ``"v";``, and a whole table of string fields such as a stanza's
# ``attr``): fewer trips through the Python loop is what makes this reader fast. The last
# alternative takes any other character, so ``finditer`` never skips text.
_NAME_END = rb"(?![0-9A-Za-z_])"
_FLOAT = rb"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"  # one way to split digits: no backtracking
_SEP = _WS + rb"[;,]"
_KEY_OPEN = rb"\[" + _WS + rb'"(' + _PLAIN + rb')"' + _WS + rb"\]" + _WS + rb"=" + _WS
_FLAT_FIELD = _KEY_OPEN + rb'"(' + _PLAIN + rb')"'
_FLAT_FIELDS = rb"(?:" + _WS + _FLAT_FIELD.replace(b"(", b"(?:") + _SEP + rb")*"
_FLAT_FIELDS_RE = re.compile(_FLAT_FIELD)
_ALTERNATIVES = (
    # 1 ["k"] =  2 ["k"] = "v";  3 ["k"] = { ["a"] = "b"; };  4 ["k"] = {  5 ["k"] = 12;  6 ["k"] = true;
    # 7 ["k"] = 1.5;
    _KEY_OPEN
    + rb'(?:"('
    + _PLAIN
    + rb')"'
    + _SEP
    + rb"|\{("
    + _FLAT_FIELDS
    + rb")"
    + _WS
    + rb"\}"
    + _SEP
    + rb"|(\{)|(-?[0-9]+)"
    + _END_NUM
    + _SEP
    + rb"|(true|false)"
    + _NAME_END
    + _SEP
    + rb"|("
    + _FLOAT
    + rb")"
    + _END_NUM
    + _SEP
    + rb")?",
    rb'"(' + _PLAIN + rb')"(?:' + _WS + rb"([;,]))?",  # 8 "v"  9 "v";
    rb"(\})(?:" + _WS + rb"([;,]))?",  # 10 }  11 };
    rb"(\{)",  # 12
    rb"([;,])",  # 13
    rb"(-?[0-9]+)" + _END_NUM,  # 14 decimal integer
    rb'"(' + _BODY_DQ + rb')"',  # 15 string with escapes
    rb"'(" + _BODY_SQ + rb")'",  # 16 single-quoted string
    rb"(" + _FLOAT + rb")" + _END_NUM,  # 17 decimal float
    rb"(-?0[xX](?:[0-9a-fA-F]+(?:\.[0-9a-fA-F]*)?|\.[0-9a-fA-F]+)(?:[pP][+-]?[0-9]+)?)" + _END_NUM,  # 18 hex
    rb"(true|false|nil)" + _NAME_END,  # 19
    rb"\((-?[01])/0\)",  # 20 (1/0) (-1/0) (0/0)
    rb"(\[)(?![\[=])",  # 21 [ of a [key] =
    rb"(\])" + _WS + rb"=",  # 22 ] = of a [key] =
    rb"([A-Za-z_][0-9A-Za-z_]*)" + _WS + rb"=(?!=)",  # 23 name =
    rb"(return)" + _NAME_END,  # 24
    rb"(item)" + _WS + rb"\(",  # 25 item(
    rb"(\))(?:" + _WS + rb"(;))?",  # 26 )  27 );
    rb"(--(?:\[(=*)\[[\s\S]*?\]\29\]|[^\n]*))",  # 28 comment (29: its level)
    rb"(\[(=*)\[[\s\S]*?\]\31\])",  # 30 long string (31: its level)
    rb"([^ \t\n\r\f\v])",  # 32 anything else: an error
)
_TOKEN = re.compile(_WS + rb"(?:" + b"|".join(_ALTERNATIVES) + rb")")
_NEWLINES = re.compile(rb"\r\n|\n\r|\r|\n")
_ESCAPE = re.compile(
    rb"\\(?:([0-9]{1,3})|x([0-9A-Fa-f]{2})|u\{([0-9A-Fa-f]+)\}|(z)[ \t\n\r\f\v]*|(\r\n?|\n\r?)|(.))", re.S
)
_NAMED_ESCAPES = {
    b"a": b"\a",
    b"b": b"\b",
    b"f": b"\f",
    b"n": b"\n",
    b"r": b"\r",
    b"t": b"\t",
    b"v": b"\v",
    b"\\": b"\\",
    b'"': b'"',
    b"'": b"'",
}
_KEYWORDS = frozenset(
    b"and break do else elseif end false for function goto if in local nil not or repeat return then true"
    b" until while".split()
)

# Parser states.
_FIELD, _AFTERKEY, _AFTERVAL, _KEYEXPR, _KEYCLOSE = 0, 1, 2, 3, 4
_TOP, _DAT_START, _DAT_END, _DAT_DONE, _LIST_START, _LIST_RPAREN, _LIST_SEMI, _VAL_END = range(5, 13)
_EOF_OK = frozenset((_DAT_START, _DAT_END, _DAT_DONE, _LIST_START, _LIST_SEMI, _VAL_END))
_MISSING = object()


def _utf8_escape(code: int) -> bytes:
    """Lua's \\u{XXX}: UTF-8 extended to 31 bits (surrogates and all), as luaO_utf8esc does."""
    if code < 0x80:
        return bytes((code,))
    out = []
    limit = 0x3F
    while code > limit:
        out.append(0x80 | (code & 0x3F))
        code >>= 6
        limit >>= 1
    out.append(((~limit << 1) & 0xFF) | code)
    return bytes(reversed(out))


def _unescape_one(m: re.Match) -> bytes:
    dec, hx, uni, z, nl, other = m.groups()
    if dec is not None:
        n = int(dec)
        if n > 255:
            raise ValueError("decimal escape too large")
        return bytes((n,))
    if hx is not None:
        return bytes((int(hx, 16),))
    if uni is not None:
        n = int(uni, 16)
        if n > 0x7FFFFFFF:
            raise ValueError("UTF-8 value too large")
        return _utf8_escape(n)
    if z is not None:
        return b""
    if nl is not None:
        return b"\n"
    named = _NAMED_ESCAPES.get(other)
    if named is None:
        raise ValueError("invalid escape sequence")
    return named


# Prosody's escapes (\ddd and the named ones) map through a table in C; anything else (\x, \u{},
# \z, escaped newlines, invalid escapes) misses the table and takes the general path.
_ESCAPE_SPLIT = re.compile(rb"(\\[0-9]{1,3}|\\[\s\S])")
_ESCAPE_TABLE = {b"\\" + k: v for k, v in _NAMED_ESCAPES.items()}
for _n in range(256):
    for _width in (1, 2, 3):
        if _n < 10**_width:
            _ESCAPE_TABLE[b"\\%0*d" % (_width, _n)] = bytes((_n,))


def _unescape(raw: bytes) -> str:
    parts = _ESCAPE_SPLIT.split(raw)
    try:
        parts[1::2] = map(_ESCAPE_TABLE.__getitem__, parts[1::2])
        return b"".join(parts).decode("utf-8", "surrogateescape")
    except KeyError:
        pass
    try:
        data = _ESCAPE.sub(_unescape_one, raw)
    except ValueError as exc:
        raise _Syntax(str(exc), 0) from None
    return data.decode("utf-8", "surrogateescape")


def _hex_number(tok: bytes) -> int | float:
    neg = tok[:1] == b"-"
    body = tok[1:] if neg else tok
    if b"." in body or b"p" in body or b"P" in body:
        v = float.fromhex(body.decode("ascii"))
        return -v if neg else v
    n = int(body[2:], 16) & 0xFFFFFFFFFFFFFFFF  # Lua's hex integers wrap around
    if neg:
        n = -n & 0xFFFFFFFFFFFFFFFF
    return n - 0x10000000000000000 if n > _INT_MAX else n


def _table_key(v: Any) -> Any:
    """A value used as a key, normalised as Lua stores it."""
    if v is None:
        raise ValueError("table index is nil")
    if v is True or v is False:
        return BoolKey(v)
    # v comes from the parser, so exact types and isinstance agree (bools were handled above).
    if isinstance(v, float):
        if math.isnan(v):
            raise ValueError("table index is NaN")
        if v.is_integer() and _INT_MIN <= v <= _INT_MAX:
            return int(v)
    elif isinstance(v, dict):
        raise ValueError("a table used as a table key is not supported")
    return v


def _merge_fields(arr: list, kd: dict, kpos: dict | None) -> dict:
    """A table from a constructor's positional and keyed fields, with Lua's precedence."""
    t = dict(zip(range(1, len(arr) + 1), arr))
    if kpos is None:
        t.update(kd)
        return t
    for k, v in kd.items():
        # A keyed field beats positional item k only when item k was flushed before it was set.
        if k not in t or kpos.get(k, -1) >= k:
            t[k] = v
    return t


def _parse(data: bytes, start_state: int, pos: int = 0, one_statement: bool = False) -> tuple[Any, int]:
    """The value (or list items) of ``data[pos:]`` and where reading ended.

    With ``one_statement`` (list files only) it stops after the first ``item(...)`` statement,
    so that luashape's reader can take over again from there.
    """
    state = start_state
    stack: list = []
    arr: list = []
    kd: dict = {}
    kpos: dict | None = None
    fnil = False
    key: Any = None
    result: Any = None
    items: list = []
    kcache: dict = {}
    for m in _TOKEN.finditer(data, pos):
        kind = m.lastindex
        if kind <= 7:  # ["key"] = ...
            if state != _FIELD:
                raise _Syntax("unexpected key", m.start(1))
            raw = m.group(1)
            key = kcache.get(raw)
            if key is None:
                key = kcache[raw] = raw.decode("utf-8", "surrogateescape")
            if kind == 2:
                kd[key] = m.group(2).decode("utf-8", "surrogateescape")
            elif kind == 3:
                table = {}
                for k, x in _FLAT_FIELDS_RE.findall(m.group(3)):
                    fkey = kcache.get(k)
                    if fkey is None:
                        fkey = kcache[k] = k.decode("utf-8", "surrogateescape")
                    table[fkey] = x.decode("utf-8", "surrogateescape")
                kd[key] = table
            elif kind == 4:
                if len(stack) >= MAX_DEPTH:
                    raise _Syntax(f"tables nested deeper than {MAX_DEPTH} levels", m.start(4))
                stack.append((_AFTERKEY, key, arr, kd, kpos, fnil))
                arr, kd, kpos, fnil = [], {}, None, False
            elif kind == 5:
                v = int(m.group(5))
                kd[key] = v if -_INT_MAX <= v <= _INT_MAX else float(m.group(5))
            elif kind == 7:
                kd[key] = float(m.group(7))
            elif kind == 6:
                kd[key] = m.group(6) == b"true"
            else:
                state = _AFTERKEY
            continue
        sep = False
        if kind == 9 or kind == 8:  # "value" or "value";
            v = m.group(8).decode("utf-8", "surrogateescape")
            if kind == 9:
                if state == _FIELD:
                    arr.append(v)
                    continue
                sep = True
        elif kind == 11 or kind == 10:  # } or };
            if state != _AFTERVAL and state != _FIELD:
                raise _Syntax("unexpected '}'", m.start(10))
            if kpos is None and not arr:
                v = kd
            elif kpos is None and not kd:
                v = dict(zip(range(1, len(arr) + 1), arr))
            else:
                v = _merge_fields(arr, kd, kpos)
            if fnil:
                v = {k: x for k, x in v.items() if x is not None}
            state, key, arr, kd, kpos, fnil = stack.pop()
            sep = kind == 11
        elif kind == 12:
            if state != _FIELD and state != _AFTERKEY and state != _KEYEXPR and state != _TOP:
                raise _Syntax("unexpected '{'", m.start(12))
            if len(stack) >= MAX_DEPTH:
                raise _Syntax(f"tables nested deeper than {MAX_DEPTH} levels", m.start(12))
            stack.append((state, key, arr, kd, kpos, fnil))
            arr, kd, kpos, fnil, state = [], {}, None, False, _FIELD
            continue
        elif kind == 13:
            if state == _AFTERVAL:
                state = _FIELD
            elif _top_separator(m.group(13), state, start_state):
                state = _DAT_DONE if state in (_DAT_END, _TOP) else _LIST_START
            else:
                raise _Syntax("unexpected separator", m.start(13))
            continue
        elif kind == 14:
            v = int(m.group(14))
            if v > _INT_MAX or v < -_INT_MAX:
                v = float(m.group(14))  # Lua: a decimal integer numeral that overflows is a float
        elif kind == 15 or kind == 16:
            v = _unescape(m.group(kind))
        elif kind == 17:
            v = float(m.group(17))
        elif kind == 18:
            v = _hex_number(m.group(18))
        elif kind == 19:
            word = m.group(19)
            v = True if word == b"true" else False if word == b"false" else None
            if v is None:
                fnil = True
        elif kind == 20:
            sign = m.group(20)
            v = math.inf if sign == b"1" else -math.inf if sign == b"-1" else math.nan
        elif kind == 21:
            if state != _FIELD:
                raise _Syntax("unexpected '['", m.start(21))
            state = _KEYEXPR
            continue
        elif kind == 22:
            if state != _KEYCLOSE:
                raise _Syntax("unexpected ']'", m.start(22))
            if isinstance(key, int):  # never a bool: _table_key made those BoolKey
                if kpos is None:
                    kpos = {}
                kpos[key] = len(arr) - len(arr) % 50  # positional items Lua has stored so far
            state = _AFTERKEY
            continue
        elif kind == 23:
            name = m.group(23)
            if state != _FIELD or name in _KEYWORDS:
                raise _Syntax("unexpected name " + repr(name.decode("ascii")), m.start(23))
            key = name.decode("ascii")
            state = _AFTERKEY
            continue
        elif kind == 24:
            if state != _DAT_START:
                raise _Syntax("unexpected 'return'", m.start(24))
            state = _TOP
            continue
        elif kind == 25:
            if state != _LIST_START and state != _LIST_SEMI:
                raise _Syntax("unexpected 'item('", m.start(25))
            state = _TOP
            continue
        elif kind == 26 or kind == 27:
            if state != _LIST_RPAREN:
                raise _Syntax("unexpected ')'", m.start(26))
            if one_statement:
                return items, m.end()
            state = _LIST_START if kind == 27 else _LIST_SEMI
            continue
        elif kind == 28:
            continue  # comment
        elif kind == 30:
            v = _long_string(m.group(30))
        else:
            start = m.start(kind)
            if data[start : start + 2] in (b"--", b"[[", b"[="):
                raise _Syntax("unfinished long comment or string", start)
            # Never quote the text: it may be part of a password hash or a message.
            raise _Syntax("unexpected text", start)
        # A value is complete: store it where the state says.
        if state == _AFTERKEY:
            kd[key] = v
            state = _AFTERVAL
        elif state == _FIELD:
            arr.append(v)
            state = _AFTERVAL
        elif state == _KEYEXPR:
            try:
                key = _table_key(v)
            except ValueError as exc:
                raise _Syntax(str(exc), m.start(kind)) from None
            state = _KEYCLOSE
        elif state == _TOP:
            if start_state == _DAT_START:
                result, state = v, _DAT_END
            elif start_state == _LIST_START:
                if v is not None:  # table.insert(items, nil) stores nothing
                    items.append(v)
                state = _LIST_RPAREN
            else:
                result, state = v, _VAL_END
        else:
            raise _Syntax("unexpected value", m.start(kind))
        if sep:  # the token ended with a field separator
            if state == _AFTERVAL:
                state = _FIELD
            elif state == _DAT_END:
                state = _DAT_DONE
            else:
                raise _Syntax("unexpected separator", m.end() - 1)
    if not (state in _EOF_OK or (state == _TOP and start_state == _DAT_START)):
        raise _Syntax("unexpected end of data", len(data))
    return (items if start_state == _LIST_START else result), len(data)


def _top_separator(sep: bytes, state: int, start_state: int) -> bool:
    """A ';' outside tables: after ``return v``, a bare ``return;``, or between list statements."""
    if sep != b";":
        return False
    return state in (_DAT_END, _LIST_SEMI, _LIST_START) or (state == _TOP and start_state == _DAT_START)


def _long_string(token: bytes) -> str:
    level = token.index(b"[", 1) + 1
    body = token[level : len(token) - level]
    m = _NEWLINES.match(body)
    if m:  # the first newline right after the opening bracket is not part of the string
        body = body[m.end() :]
    return _NEWLINES.sub(b"\n", body).decode("utf-8", "surrogateescape")


def _load(data: bytes, source: str, start_state: int, kind: str, sandbox: bool) -> Any:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError("Lua data must be bytes")
    data = bytes(data)
    try:
        if start_state == _LIST_START:
            from .luashape import read_list  # builds on this module: imported when first needed

            return read_list(data)
        return _parse(data, start_state)[0]
    except _Syntax as exc:
        line = data.count(b"\n", 0, exc.line) + 1
        where = f"line {line}: {exc}"
    except (ValueError, OverflowError) as exc:  # e.g. a float that float() refuses; never escapes raw
        where = str(exc)
    if not sandbox:
        raise LuaDataError(f"not in Prosody's data format ({where})", source)
    from .luasandbox import sandbox_load

    try:
        return sandbox_load(data, source, kind)
    except LuaDataError as exc:
        message = f"not in Prosody's data format ({where}), and Lua could not read it: {exc.reason}"
        raise LuaDataError(message, source) from None


def loads_dat(data: bytes, source: str, *, sandbox: bool = True) -> Any:
    """A keyval (``.dat``) file's value: ``return <value>;``; an empty file or ``return nil;`` is None.

    With ``sandbox=False`` a file outside the strict grammar is an error instead of being run.
    """
    return _load(data, source, _DAT_START, "dat", sandbox)


def loads_list(data: bytes, source: str, *, sandbox: bool = True) -> list[Any]:
    """An archive (``.list``) file's items: the argument of each ``item(...)`` call, in order."""
    return _load(data, source, _LIST_START, "list", sandbox)


def loads_value(data: bytes, source: str, *, sandbox: bool = True) -> Any:
    """One serialized value (what ``util.serialization.deserialize`` reads)."""
    return _load(data, source, _TOP, "value", sandbox)


# ---------------------------------------------------------------------------------------------
# Writer

_STR_ESCAPES = [b"\\%03d" % i for i in range(256)]
for _c, _e in ((7, b"\\a"), (8, b"\\b"), (12, b"\\f"), (10, b"\\n"), (13, b"\\r"), (9, b"\\t"), (11, b"\\v")):
    _STR_ESCAPES[_c] = _e
for _c in b"\\\"'":
    _STR_ESCAPES[_c] = b"\\" + bytes((_c,))
for _c in range(32, 127):
    if _c not in b"\\\"'":
        _STR_ESCAPES[_c] = bytes((_c,))
# Splitting on runs of bytes to escape (one capture group) leaves them at the odd indices.
_ESCAPE_RUNS = re.compile(rb"([\x00-\x1f\"'\\\x7f-\xff]+)")
# The text is written as fields, each ending with ";": a table is "{", then per field its line
# break and indent, key and value with ";", then the closing line ("};" when nested, as the
# table is a field itself). The ";" after the outermost value is cut off (_strip_field).
_INDENTS = [b"\n" + b"\t" * d for d in range(MAX_DEPTH + 2)]
_CLOSERS = [b"\n" + b"\t" * (d - 1) + b"};" for d in range(1, MAX_DEPTH + 2)]
_CLOSERS.insert(0, b"")  # no table is 0 deep: keeps _CLOSERS[depth] the closer of a table at depth
_CACHED_RUN = 4  # escape runs this short (one UTF-8 character, a few control bytes) are kept
_CACHED_STRING = 64  # literals of strings this short are kept (per call for values, per process for keys)
_CACHE_MAX = 4096  # entries of a module-wide cache; later ones are computed each time
_CACHED_DEPTH = 8  # key texts are kept for tables this deep (each depth has its indent)


class _RunEscapes(dict):
    """Escaped text of a run of bytes, computed on a miss: a lookup that is all C on a hit."""

    def __missing__(self, run: bytes) -> bytes:
        text = b"".join(map(_STR_ESCAPES.__getitem__, run))
        # Only short runs: they recur (é, ☃, \n) and carry no user text worth keeping around.
        if len(run) <= _CACHED_RUN and len(self) < _CACHE_MAX:
            self[run] = text
        return text


_RUN_ESCAPES = _RunEscapes()
_LATIN1_ESCAPES = [text.decode("latin-1") for text in _STR_ESCAPES]  # by byte, for str.translate
_TRANSLATED = 128  # bytes of the longest text escaped by str.translate, not by runs (faster on mostly-ASCII text)
# Per depth, '\n\t["name"] = ' of string keys: few distinct (stanza and roster fields), met in every file.
_KEY_TEXTS: list[dict[str, bytes]] = [{} for _depth in range(_CACHED_DEPTH + 1)]


def _encode_str(s: str) -> bytes:
    try:
        return s.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as exc:
        raise EncodeError(f"string is not encodable as bytes: {exc}") from None


def _quote(raw: bytes, end: bytes = b'"') -> bytes:
    """The literal of a string's bytes, with ``end`` for its closing quote (b'";' for a field)."""
    if len(raw) <= _TRANSLATED:
        # A short text: one C loop over its bytes (as latin-1 characters) beats splitting it.
        return b'"' + raw.decode("latin-1").translate(_LATIN1_ESCAPES).encode("ascii") + end
    parts = _ESCAPE_RUNS.split(raw)
    if len(parts) > 1:
        # Every run is mapped in C (no Python callback per run, unlike re.sub with a function).
        parts[1::2] = map(_RUN_ESCAPES.__getitem__, parts[1::2])
        raw = b"".join(parts)
    return b'"' + raw + end


def _quote_str(s: str, end: bytes = b'"') -> bytes:
    """A string's literal, with ``end`` for its closing quote (b'";' for a field)."""
    # Most strings are printable ASCII without quotes or backslashes, copied as they are:
    # isascii is O(1) on CPython's str, and isprintable rejects every ASCII control and DEL.
    if s.isascii() and s.isprintable() and '"' not in s and "'" not in s and "\\" not in s:
        return b'"' + s.encode("ascii") + end
    return _quote(_encode_str(s), end)


def _string_field(s: str, strings: dict[str, bytes]) -> bytes:
    """A string's literal and ";", kept in ``strings`` when short (bodies rarely recur: not worth their memory)."""
    text = _quote_str(s, b'";')
    if len(s) <= _CACHED_STRING:
        strings[s] = text
    return text


def _key_text(k: str, depth: int) -> bytes:
    """``\\n\\t["k"] = `` for a string key of a table at ``depth``, kept for later tables."""
    text = _INDENTS[depth] + b"[" + _quote_str(k) + b"] = "
    if depth <= _CACHED_DEPTH and len(k) <= _CACHED_STRING:
        cache = _KEY_TEXTS[depth]
        if len(cache) < _CACHE_MAX:
            cache[k] = text
    return text


def _dump_float(v: float) -> bytes:
    if math.isnan(v):
        return b"(0/0)"
    if v == math.inf:
        return b"(1/0)"
    if v == -math.inf:
        return b"(-1/0)"
    text = b"%.18g" % v
    if b"." in text or b"e" in text:
        return text
    return text + b".0"  # deviation: Prosody writes "1", which Lua reads back as an integer


def _dump_int(v: int) -> bytes:
    if v > _INT_MAX or v < _INT_MIN:
        raise EncodeError(f"integer {v} does not fit in a Lua integer (64 bits)")
    if v == _INT_MIN:
        return b"0x8000000000000000"  # deviation: "-9223372036854775808" reads back as a float
    return b"%d" % v


def _dump_scalar(v: Any) -> bytes:
    t = type(v)
    if t is str:
        return _quote_str(v)
    if t is int:
        return _dump_int(v)
    if t is bool:
        return b"true" if v else b"false"
    if t is float:
        return _dump_float(v)
    if v is None:
        return b"nil"
    if t is BoolKey:
        return b"true" if v.value else b"false"
    # Subclasses (IntEnum, str enums, numpy-free floats...) are written as their base type.
    if isinstance(v, bool):
        return b"true" if v else b"false"
    if isinstance(v, int):
        return _dump_int(int(v))
    if isinstance(v, float):
        return _dump_float(float(v))
    if isinstance(v, str):
        return _quote_str(str(v))
    raise EncodeError(f"cannot write a {t.__name__} as Lua data")


def _norm_key(k: Any) -> tuple[tuple, Any, bytes]:
    """(sort key, key as Lua stores it, its text) for a non-string key: booleans sort before numbers."""
    if isinstance(k, (BoolKey, bool)):
        b = k.value if isinstance(k, BoolKey) else bool(k)
        return (0, b), BoolKey(b), b"true" if b else b"false"
    if isinstance(k, int):
        k = int(k)
        return (1, k), k, _dump_int(k)
    if isinstance(k, float):
        k = float(k)
        if math.isnan(k):
            raise EncodeError("NaN cannot be a table key")
        if k.is_integer() and _INT_MIN <= k <= _INT_MAX:
            return (1, int(k)), int(k), _dump_int(int(k))
        return (1, k), k, _dump_float(k)
    if isinstance(k, str):
        raw = _encode_str(str(k))
        return (2, raw), str(k), raw
    if k is None:
        raise EncodeError("nil cannot be a table key")
    raise EncodeError(f"a {type(k).__name__} cannot be a table key")


def _write_field(v: Any, depth: int, out: list[bytes], strings: dict[str, bytes]) -> None:
    """Append the text of ``v`` and ";" to ``out``, as a field of a table at ``depth`` (0: none)."""
    t = type(v)
    if t is str:
        out.append(strings.get(v) or _string_field(v, strings))
    elif t is dict:
        _write_table(v, depth, out, strings)
    elif isinstance(v, dict):
        _write_table(dict(v), depth, out, strings)
    else:
        out.append(_dump_scalar(v) + b";")


def _write_table(t: dict, depth: int, out: list[bytes], strings: dict[str, bytes]) -> None:
    """A table whose keys are 1..n in order, BoolKeys and strings (stanzas, rosters, accounts),
    else ``_write_any_table``: the same text, without normalising each key or sorting by tuples."""
    depth += 1
    if depth > MAX_DEPTH:
        raise EncodeError(f"tables nested deeper than {MAX_DEPTH} levels (or a cycle)")
    if not t:  # a stanza's empty attr
        out.append(b"{};")
        return
    keys = _usual_keys(t)
    if keys is None:
        _write_any_table(t, depth, out, strings)
        return
    n, flags, names = keys
    start = len(out)
    out.append(b"{")
    indent = _INDENTS[depth]
    for i in range(1, n + 1):
        v = t[i]
        if v is None:  # a nil ends Lua's sequence: the items after it are keyed fields
            del out[start:]
            _write_any_table(t, depth, out, strings)
            return
        out.append(indent)
        _write_field(v, depth, out, strings)
    for flag in flags:
        v = t[flag]
        if v is not None:
            out.append(indent + (b"[true] = " if flag.value else b"[false] = "))
            _write_field(v, depth, out, strings)
    texts = _KEY_TEXTS[depth] if depth <= _CACHED_DEPTH else {}
    for k in names:
        v = t[k]
        # Strings inline (most values are), then nil, which a Lua table cannot hold.
        if type(v) is str:  # pylint: disable=unidiomatic-typecheck  # subclasses in _write_field
            out.append(texts.get(k) or _key_text(k, depth))
            out.append(strings.get(v) or _string_field(v, strings))
        elif v is not None:
            out.append(texts.get(k) or _key_text(k, depth))
            _write_field(v, depth, out, strings)
    _close(out, start, depth)


def _usual_keys(t: dict) -> tuple[int, list[BoolKey], list[str]] | None:
    """(n, BoolKeys, string keys), in the order they are written, when ``t``'s keys are 1..n in
    insertion order, BoolKeys and strings sorting by their bytes; else None."""
    names = []
    flags = []  # a roster's [false] holds its version
    n = 0
    for k in t:
        if type(k) is str:  # pylint: disable=unidiomatic-typecheck  # subclasses go the general way
            names.append(k)
        elif type(k) is int and k == n + 1:  # pylint: disable=unidiomatic-typecheck  # a bool is no position
            n += 1
        elif type(k) is BoolKey:  # pylint: disable=unidiomatic-typecheck
            flags.append(k)
        else:
            return None
    if names:
        if not _in_byte_order("".join(names)):
            return None
        names.sort()
    if len(flags) > 1:
        flags.sort(key=_flag_value)  # false before true
    return n, flags, names


def _flag_value(flag: BoolKey) -> bool:
    return flag.value


def _in_byte_order(names: str) -> bool:
    """Whether sorting these key names as str sorts them by their bytes, as the general way does.

    UTF-8 keeps code point order, so it does unless a surrogate (a byte that was not UTF-8) is
    in play; and then no name can fail to encode either (the general way checks every key before
    it writes a value: so does this one, by this test).
    """
    if names.isascii():
        return True
    try:
        names.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _close(out: list[bytes], start: int, depth: int) -> None:
    """End the table opened at ``out[start]``: ``{}`` (and ";") when it got no field."""
    if len(out) == start + 1:
        out[start] = b"{};"
    else:
        out.append(_CLOSERS[depth])


def _write_any_table(t: dict, depth: int, out: list[bytes], strings: dict[str, bytes]) -> None:
    """Any table (``depth`` already counted): keys normalised as Lua stores them, then sorted."""
    entries = []  # (sort key, key, key text, value)
    others: dict = {}  # non-string keys as Lua stores them, to find positional items and clashes
    for k, v in t.items():
        if v is None:
            continue  # a Lua table holds no nil
        if type(k) is str:  # pylint: disable=unidiomatic-typecheck  # fast path; subclasses go through _norm_key
            raw = _encode_str(k)
            entries.append(((2, raw), k, raw, v))
            continue
        sk, nk, text = _norm_key(k)
        if nk in others:
            raise EncodeError(f"table key {k!r} given twice (as {nk!r})")
        others[nk] = v
        entries.append((sk, nk, text, v))
    n = 0
    while (n + 1) in others:  # only an int can equal n + 1: floats there are non-integral
        n += 1
    start = len(out)
    out.append(b"{")
    indent = _INDENTS[depth]
    for i in range(1, n + 1):
        out.append(indent)
        _write_field(others[i], depth, out, strings)
    if len(entries) > n:
        entries.sort(key=_sort_key)
        for sk, nk, text, v in entries:
            if n and sk[0] == 1 and isinstance(nk, int) and 1 <= nk <= n:  # nk is never a bool (BoolKey)
                continue
            out.append(indent + b"[" + (_quote(text) if sk[0] == 2 else text) + b"] = ")
            _write_field(v, depth, out, strings)
    _close(out, start, depth)


def _sort_key(entry: tuple) -> tuple:
    return entry[0]


def _strip_field(out: list[bytes]) -> None:
    """Cut the ";" that ends the last field written: the outermost value is no field."""
    out[-1] = out[-1][:-1]


def dumps(value: Any) -> bytes:
    """util.serialization's text for one value (see the module docstring for the key order)."""
    out: list[bytes] = []
    _write_field(value, 0, out, {})
    _strip_field(out)
    return b"".join(out)


def dumps_dat(value: Any) -> bytes:
    """A keyval (``.dat``) file holding ``value``."""
    out = [b"return "]
    _write_field(value, 0, out, {})
    out.append(b"\n")  # after the field's ";"
    return b"".join(out)


class _Unusual(Exception):
    """Internal: a stanza that dumps_stanza_item leaves to the general writer."""


def dumps_stanza_item(element: Any, attr: dict[str, str], fields: dict[str, Any], strings: dict[str, bytes]) -> bytes:
    """``dumps_list``'s text for one item: the table ``element.preserialize()`` makes (a
    stanza.Element: ``name``, ``attr``, ``children``), with ``attr`` for its attributes and the
    string keys of ``fields`` (``key``, ``when``, ``with``) added, written from the element
    without building that table, in a third of the time. ``strings`` as ``dumps_list`` keeps
    them. An element of another shape, or too deep, goes the general way."""
    if "attr" in fields or "name" in fields:
        raise EncodeError("an item's fields cannot replace its attr or name")
    out = [b"item("]
    try:
        _write_element(element, attr, sorted(["attr", "name", *fields]), fields, 1, out, strings)
    except _Unusual:
        table = element.preserialize()
        table["attr"] = attr
        table.update(fields)
        return dumps_list([table])
    _strip_field(out)
    out.append(b");\n")
    return b"".join(out)


_ELEMENT_KEYS = ["attr", "name"]  # an element's string keys, by their bytes (its children come first)


def _write_element(
    element: Any, attr: dict, keys: list[str], fields: dict, depth: int, out: list[bytes], strings: dict[str, bytes]
) -> None:
    """``_write_table`` of the element's preserialized table, ``attr`` and ``fields`` in it; ``keys``
    its string keys in order."""
    if depth >= MAX_DEPTH:  # its attr table would be too deep: the general way raises
        raise _Unusual
    indent = _INDENTS[depth]
    out.append(b"{")
    for child in element.children:
        out.append(indent)
        if type(child) is str:  # pylint: disable=unidiomatic-typecheck  # subclasses: the general way
            out.append(strings.get(child) or _string_field(child, strings))
        elif type(child) is type(element):  # pylint: disable=unidiomatic-typecheck
            _write_element(child, child.attr, _ELEMENT_KEYS, {}, depth + 1, out, strings)
        else:
            raise _Unusual
    texts = _KEY_TEXTS[depth] if depth <= _CACHED_DEPTH else {}
    for k in keys:
        if k == "attr":
            out.append(texts.get(k) or _key_text(k, depth))
            _write_table(attr, depth, out, strings)  # below MAX_DEPTH: checked above
            continue
        v = element.name if k == "name" else fields[k]
        if type(v) is str:  # pylint: disable=unidiomatic-typecheck
            out.append(texts.get(k) or _key_text(k, depth))
            out.append(strings.get(v) or _string_field(v, strings))
        elif v is not None:
            out.append(texts.get(k) or _key_text(k, depth))
            _write_field(v, depth, out, strings)
    out.append(_CLOSERS[depth])


def dumps_list(items: Iterable[Any]) -> bytes:
    """An archive (``.list``) file holding ``items`` (None is refused: Prosody's loader drops it)."""
    strings: dict[str, bytes] = {}  # an archive's items share most strings (JIDs, names, types)
    out: list[bytes] = []
    for item in items:
        if item is None:
            raise EncodeError("an archive item cannot be nil")
        out.append(b"item(")
        _write_field(item, 0, out, strings)
        _strip_field(out)
        out.append(b");\n")
    return b"".join(out)
