# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fuzzing the readers of untrusted text: the Lua data reader (strict, and with the sandbox on a
small budget), the XML parser and the config reader. Any input parses or fails with our own error
type; none hangs (each call is bounded in time) and none takes the process down."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from typing import Any, Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ansible_collections.xmpp.prosody.plugins.module_utils import luasandbox
from ansible_collections.xmpp.prosody.plugins.module_utils.config import load_config
from ansible_collections.xmpp.prosody.plugins.module_utils.errors import ProsodyMigrateError
from ansible_collections.xmpp.prosody.plugins.module_utils.luadata import dumps_dat, dumps_list, loads_dat, loads_list
from ansible_collections.xmpp.prosody.plugins.module_utils.stanza import Element

CALL_SECONDS = 5.0  # far above any honest call; a hang is caught, not waited out


class Hung(Exception):
    """A call that ran past CALL_SECONDS."""


@contextlib.contextmanager
def bounded() -> Iterator[None]:
    def alarm(signum: int, frame: Any) -> None:
        raise Hung(f"no answer within {CALL_SECONDS} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, CALL_SECONDS)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def parses_or_our_error(call: Callable[[], Any]) -> Any:
    """The call's result, or None when it failed with one of our errors; anything else fails the test."""
    with bounded():
        try:
            return call()
        except ProsodyMigrateError as exc:
            assert str(exc)
            return None


# inputs -----------------------------------------------------------------------------------------
LUA_TOKENS = [
    b"return",
    b" ",
    b"{",
    b"}",
    b"[",
    b"]",
    b"=",
    b",",
    b";",
    b'"',
    b"'",
    b"\\",
    b"[[",
    b"]]",
    b"[==[",
    b"--",
    b"--[[",
    b"\n",
    b"\r",
    b"1",
    b"-",
    b".",
    b"0x",
    b"0x1p4",
    b"1e309",
    b"9223372036854775808",
    b"nil",
    b"true",
    b"false",
    b"item(",
    b")",
    b"(",
    b"a",
    b"_",
    b"\\u{110000}",
    b"\\u{7FFFFFFF}",
    b"\\999",
    b"\\x",
    b"\\z",
    b"\\065",
    b"\x00",
    b"\xff",
    b"\xc3",
    b"while true do end",
    b"local",
    b"function",
    b"..",
    b"...",
    b"#",
    b"~",
    b"::",
    b"goto",
    b'("x"):rep(1e9)',
    b"end",
]
lua_soup = st.lists(st.sampled_from(LUA_TOKENS), max_size=40).map(b"".join)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True),
    st.text(max_size=8),
)
values = st.recursive(
    scalars,
    lambda inner: st.dictionaries(st.one_of(st.text(max_size=5), st.integers(-3, 10)), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    """Valid text with a few bytes deleted, replaced, inserted or the tail cut off."""
    data = bytearray(draw(base))
    for _unused in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["delete", "replace", "insert", "truncate"]))
        if op == "truncate":
            del data[at:]
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 3))]
        else:
            chunk = draw(st.sampled_from([*LUA_TOKENS, b"<", b">", b"&", b"/", b"?", b"!"]))
            data[at : at + (op == "replace")] = chunk
    return bytes(data)


dat_texts = st.one_of(
    st.binary(max_size=80), lua_soup, mutated(values.map(dumps_dat)), lua_soup.map(lambda s: b"return " + s)
)
list_texts = st.one_of(
    st.binary(max_size=80),
    lua_soup,
    mutated(st.lists(st.dictionaries(st.text(max_size=4), scalars, max_size=3), max_size=3).map(dumps_list)),
)


# the Lua data reader -------------------------------------------------------------------------------
@given(dat_texts, list_texts)
def test_strict_lua_reader(dat: bytes, lst: bytes):
    parses_or_our_error(lambda: loads_dat(dat, "fuzz.dat", sandbox=False))
    result = parses_or_our_error(lambda: loads_list(lst, "fuzz.list", sandbox=False))
    assert result is None or isinstance(result, list)


@contextlib.contextmanager
def small_sandbox() -> Iterator[None]:
    """An eighth of the memory and a hundredth of the instructions: limits are reached quickly."""
    saved = luasandbox.BASE_MEMORY, luasandbox.BASE_INSTRUCTIONS
    luasandbox.BASE_MEMORY, luasandbox.BASE_INSTRUCTIONS = 8 * 1024 * 1024, 200_000
    try:
        yield
    finally:
        luasandbox.BASE_MEMORY, luasandbox.BASE_INSTRUCTIONS = saved


@given(dat=dat_texts, lst=list_texts)
def test_lua_reader_with_the_sandbox(dat: bytes, lst: bytes):
    with small_sandbox():
        parses_or_our_error(lambda: loads_dat(dat, "fuzz.dat"))
        result = parses_or_our_error(lambda: loads_list(lst, "fuzz.list"))
    assert result is None or isinstance(result, list)


def test_the_small_sandbox_does_stop_loops_and_allocations():
    for text in (b"while true do end", b'local t = {} for i = 1, 1e9 do t[i] = ("x"):rep(100) .. i end return t'):
        with small_sandbox():
            assert parses_or_our_error(lambda t=text: loads_dat(t, "fuzz.dat")) is None


# XML ---------------------------------------------------------------------------------------------
XML_TOKENS = [
    "<",
    ">",
    "/",
    "</",
    "/>",
    "m",
    "x:m",
    " ",
    "a='1'",
    'b="2"',
    "xmlns='urn:x'",
    "xmlns:x='urn:y'",
    "xml:lang='en'",
    "&amp;",
    "&lt;",
    "&#0;",
    "&#x110000;",
    "&e;",
    "<!DOCTYPE m [<!ENTITY e 'x'>]>",
    "<!ENTITY a '&a;&a;'>",
    "<?xml version='1.0' encoding='latin1'?>",
    "<?pi x?>",
    "<!-- c -->",
    "<![CDATA[x]]>",
    "text",
    "\x00",
    "\udcff",
    "\U0001f600",
    "\ufffe",
]
xml_soup = st.lists(st.sampled_from(XML_TOKENS), max_size=30).map("".join)


@given(st.one_of(xml_soup, st.text(max_size=60)))
def test_xml_parser(text: str):
    element = parses_or_our_error(lambda: Element.from_xml(text, "fuzz"))
    assert element is None or isinstance(element, Element)


def test_xml_entity_expansion_is_refused():
    bomb = (
        "<!DOCTYPE m [<!ENTITY a 'aaaaaaaaaa'><!ENTITY b '&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;'>"
        "<!ENTITY c '&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;'><!ENTITY d '&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;'>"
        "<!ENTITY e '&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;'><!ENTITY f '&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;'>]><m>&f;&f;</m>"
    )
    assert parses_or_our_error(lambda: Element.from_xml(bomb, "bomb")) is None


# the config reader ----------------------------------------------------------------------------------
CONFIG = b"""input { type = "internal", path = "/var/lib/prosody",
  hosts = { ["example.org"] = { "roster", "archive-archive" } } }
output { type = "sql", driver = "SQLite3", database = "prosody.sqlite" }
"""


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return tmp_path_factory.mktemp("fuzz-config")


@given(st.one_of(mutated(st.just(CONFIG)), lua_soup, st.binary(max_size=60)))
def test_config_reader(config_dir: Any, text: bytes):
    path = config_dir / "migrator.cfg.lua"
    path.write_bytes(text)
    with small_sandbox():
        config = parses_or_our_error(lambda: load_config(str(path)))
    assert config is None or isinstance(config, dict)
