# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lua_string filter: what it writes, real Lua 5.4 (with Prosody's util.envload) reads back as the same value."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from ansible.errors import AnsibleFilterError
from hypothesis import given
from hypothesis import strategies as st

from ansible_collections.xmpp.prosody.plugins.filter.lua_string import FilterModule, lua_string

from lua_strategies import finite_floats, finite_keys, integers, strings
from prosody_oracle import LuaSession, canon

# Each expression is loaded the way Prosody loads config files (util.envload, an empty environment),
# so nothing but the literal itself can produce the value.
ORACLE = r"""
local envload = require "util.envload".envload
handlers = {}
function handlers.exprs(exprs, out)
    for _, expr in ipairs(exprs) do
        local chunk, err = envload("return " .. expr, "=expr", {})
        if not chunk then out("!" .. err) else out(canon.encode(chunk())) end
    end
end
"""

keys = st.one_of(strings, integers, finite_keys)
scalars = st.one_of(st.booleans(), integers, finite_floats, strings)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.dictionaries(keys, inner, max_size=4), st.lists(inner, max_size=4)),
    max_leaves=8,
)


@pytest.fixture(scope="module")
def oracle() -> Iterator[LuaSession]:
    session = LuaSession(ORACLE)
    yield session
    session.close()


def as_lua(value: Any) -> Any:
    """The value as our Lua model holds it: a list is a 1-based table."""
    if isinstance(value, list):
        return {i: as_lua(v) for i, v in enumerate(value, 1)}
    if isinstance(value, dict):
        return {k: as_lua(v) for k, v in value.items()}
    return value


def lua_reads(oracle: LuaSession, exprs: list[str]) -> list[bytes]:
    return oracle.call("exprs", exprs)


@given(st.lists(values, min_size=1, max_size=20))
def test_lua_reads_back_every_value(oracle: LuaSession, batch: list[Any]) -> None:
    exprs = [lua_string(v) for v in batch]
    assert lua_reads(oracle, exprs) == [canon(as_lua(v)) for v in batch]


@given(st.lists(st.dictionaries(keys, scalars, min_size=1, max_size=4), min_size=1, max_size=20))
def test_keys_render_for_table_constructors(oracle: LuaSession, batch: list[dict[Any, Any]]) -> None:
    exprs = [
        "{ " + "; ".join(f"{lua_string(k, key=True)} = {lua_string(v)}" for k, v in d.items()) + " }" for d in batch
    ]
    assert lua_reads(oracle, exprs) == [canon(d) for d in batch]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ('Pa"ss\\word', r'"Pa\"ss\\word"'),
        ("line1\nline2\r\t", r'"line1\nline2\r\t"'),
        ("a\x00b", r'"a\000b"'),
        ("\x00" + "1", r'"\0001"'),  # three digits, so a digit after the escape stays a digit
        ("/srv/données/日本", '"/srv/données/日本"'),  # printable non-ASCII stays readable UTF-8
        ("nb\u00a0sp\u2028", r'"nb\194\160sp\226\128\168"'),  # invisible characters are escaped bytes
        (b"\xff\xfe".decode("utf-8", "surrogateescape"), r'"\255\254"'),  # bytes that are not UTF-8
        ("\x7f\x1b", r'"\127\027"'),
        (None, "nil"),
        (True, "true"),
        (-(2**63), "(-9223372036854775807 - 1)"),
        ([], "{}"),
        (["accounts", "roster"], '{ "accounts", "roster" }'),
        ({"type": "sql", "end": 1, "a b": 2, 3: True}, '{ type = "sql"; ["end"] = 1; ["a b"] = 2; [3] = true }'),
    ],
)
def test_exact_text(oracle: LuaSession, value: Any, text: str) -> None:
    assert lua_string(value) == text
    assert lua_reads(oracle, [text]) == [canon(as_lua(value))]


@pytest.mark.parametrize(
    ("value", "key", "text"),
    [
        ("driver", True, "driver"),
        ("_x9", True, "_x9"),
        ("while", True, '["while"]'),
        ("é", True, '["é"]'),
        (2, True, "[2]"),
    ],
)
def test_key_text(value: Any, key: bool, text: str) -> None:
    assert lua_string(value, key=key) == text


@pytest.mark.parametrize(
    ("value", "key", "message"),
    [
        (float("inf"), False, "inf has no Lua literal"),
        (float("nan"), False, "nan has no Lua literal"),
        (2**63, False, "does not fit Lua's 64-bit integers"),
        ("\ud800", False, r"lone surrogate U\+D800"),
        (None, True, "nil cannot be a Lua table key"),
        (float("nan"), True, "NaN cannot be a Lua table key"),
        (object(), False, "a object has no Lua form"),
        ({"k": {1, 2}}, False, "a set has no Lua form"),
    ],
)
def test_values_without_lua_form_fail_clearly(value: Any, key: bool, message: str) -> None:
    with pytest.raises(AnsibleFilterError, match=message):
        lua_string(value, key=key)


def test_filter_is_registered() -> None:
    assert FilterModule().filters() == {"lua_string": lua_string}
