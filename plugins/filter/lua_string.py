# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The xmpp.prosody.lua_string filter: a value as Lua source text, for templating Lua config files."""
# ruff: noqa: E402 (a plugin's imports follow its DOCUMENTATION, EXAMPLES and RETURN)

from __future__ import annotations

DOCUMENTATION = r"""
name: lua_string
short_description: Render a value as Lua source text (a string literal, number, boolean or table)
version_added: 0.1.0
author:
  - xmpp.prosody contributors (!UNKNOWN)
description:
  - Renders a value as a Lua expression that Lua 5.1 to 5.4 reads back as the same value, for templating
    Lua configuration files such as Prosody's C(prosody.cfg.lua) and C(migrator.cfg.lua).
  - A string becomes a double-quoted literal. Quotes, backslashes and control characters (newline, NUL, ...) are
    escaped, printable non-ASCII characters are written as UTF-8, and invisible ones (such as U+00A0 or U+2028)
    as escaped bytes. A string holding bytes that are not UTF-8 (decoded with C(surrogateescape)) keeps them.
  - An integer, a finite float, a boolean and C(None) (C(nil)) become Lua literals; a list becomes a sequence
    table, a mapping a table with its keys in order.
  - With O(key=true), renders a table key instead, for C(KEY = value) in a table constructor. That is a bare name
    when the key is a Lua identifier that is not a reserved word, else C([expression]).
options:
  _input:
    description: The value to render.
    type: raw
    required: true
  key:
    description: Render the value as a table key (C(name) or C([expression])) rather than as an expression.
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: A password with quotes and a backslash, as a Lua string literal
  ansible.builtin.debug:
    msg: "{{ 'p\"a\\ss' | xmpp.prosody.lua_string }}"  # "p\"a\\ss"

- name: A table
  ansible.builtin.debug:
    msg: "{{ {'driver': 'SQLite3', 'database': 'prosody.sqlite'} | xmpp.prosody.lua_string }}"
    # { driver = "SQLite3"; database = "prosody.sqlite" }

- name: A table key, in a template line "KEY = VALUE;"
  ansible.builtin.debug:
    msg: "{{ 'example.com' | xmpp.prosody.lua_string(key=true) }}"  # ["example.com"]
"""

RETURN = r"""
_value:
  description: The Lua source text.
  type: str
"""

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

try:
    from ansible.errors import AnsibleFilterError
except ImportError:  # pragma: no cover - the filter always runs inside Ansible

    class AnsibleFilterError(Exception):  # type: ignore[no-redef]
        """Stand-in so the module imports without Ansible."""


_IDENTIFIER = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*\Z")
_RESERVED_WORDS = """and break do else elseif end false for function goto if in local nil not or repeat return
then true until while"""
RESERVED = frozenset(_RESERVED_WORDS.split())
_SHORT_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_INT_MIN = -(2**63)
_INT_MAX = 2**63 - 1


def lua_quote(text: str) -> str:
    """A double-quoted Lua string literal holding exactly ``text``'s bytes (UTF-8, surrogateescape)."""
    return '"' + "".join(_escape_char(c) for c in text) + '"'


def _escape_char(char: str) -> str:
    short = _SHORT_ESCAPES.get(char)
    if short is not None:
        return short
    code = ord(char)
    if 0x20 <= code < 0x7F:
        return char
    if 0xDC80 <= code <= 0xDCFF:  # a raw byte kept by surrogateescape
        return f"\\{code - 0xDC00:03d}"
    if 0xD800 <= code <= 0xDFFF:
        raise AnsibleFilterError(f"lua_string: the string holds a lone surrogate U+{code:04X}, which no Lua string has")
    if code >= 0x80 and char.isprintable():
        return char
    # Control and invisible characters: their bytes as decimal escapes (3 digits, so a digit may follow).
    return "".join(f"\\{byte:03d}" for byte in char.encode("utf-8"))


def lua_key(value: Any) -> str:
    """A table key for ``KEY = value``: a bare name where Lua allows one, else ``[expression]``."""
    if isinstance(value, str) and _IDENTIFIER.match(value) and value not in RESERVED:
        return value
    if value is None:
        raise AnsibleFilterError("lua_string: nil cannot be a Lua table key")
    if isinstance(value, float) and math.isnan(value):
        raise AnsibleFilterError("lua_string: NaN cannot be a Lua table key")
    return f"[{lua_value(value)}]"


def lua_value(value: Any) -> str:
    """``value`` as a Lua expression."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if not _INT_MIN <= value <= _INT_MAX:
            raise AnsibleFilterError(f"lua_string: the integer {value} does not fit Lua's 64-bit integers")
        # -2^63 has no literal: Lua reads 9223372036854775808 as a float before negating it.
        return f"({_INT_MIN + 1} - 1)" if value == _INT_MIN else str(value)
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, str):
        return lua_quote(value)
    if isinstance(value, Mapping):
        items = [f"{lua_key(k)} = {lua_value(v)}" for k, v in value.items()]
        return "{ " + "; ".join(items) + " }" if items else "{}"
    if isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):
        items = [lua_value(v) for v in value]
        return "{ " + ", ".join(items) + " }" if items else "{}"
    raise AnsibleFilterError(f"lua_string: a {type(value).__name__} has no Lua form")


def _float(value: float) -> str:
    if not math.isfinite(value):
        raise AnsibleFilterError(f"lua_string: {value} has no Lua literal (only finite numbers have)")
    return repr(value)  # the shortest round-trip form ("2.0", "1e+16"): Lua reads it as the same double


def lua_string(value: Any, key: bool = False) -> str:
    """The filter: ``value`` as a Lua expression, or as a table key when ``key`` is true."""
    return lua_key(value) if key else lua_value(value)


class FilterModule:
    """xmpp.prosody's Lua filters."""

    def filters(self) -> dict[str, Any]:
        return {"lua_string": lua_string}
