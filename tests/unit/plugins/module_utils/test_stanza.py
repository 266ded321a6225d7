# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The stanza codec against real Prosody's util/stanza.lua and util/xml.lua."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ansible_collections.xmpp.prosody.plugins.module_utils import stanza as stanza_module
from ansible_collections.xmpp.prosody.plugins.module_utils.luadata import BoolKey
from ansible_collections.xmpp.prosody.plugins.module_utils.stanza import MAX_DEPTH, Element, StanzaError

from prosody_oracle import LUA, PRELUDE, canon, require_prosody

# ---------------------------------------------------------------------------------------------
# The oracle. Hypothesis runs one example at a time, so rather than one Lua process per example
# one Lua process serves the whole module: each request names a handler and sends a canon list
# of items; the handler's results come back canon-encoded, each with a length prefix.

LUA_SERVER = """
local st = require "util.stanza"
local xml = require "util.xml"

local function parsed(text)
    local ok, s, err = pcall(xml.parse, text)
    if not ok then return { raised = tostring(s) } end
    if not s then return { error = err } end
    return st.preserialize(s)
end

-- A stanza object made without util.stanza's checks, as tostring sees any stanza in memory.
local function raw(t)
    local s = setmetatable({ name = t.name, attr = t.attr, tags = {} }, st.stanza_mt)
    for i, child in ipairs(t) do
        if type(child) == "table" then
            child = raw(child)
            table.insert(s.tags, child)
        end
        s[i] = child
    end
    return s
end

local handlers = {
    tostring = function(t) return tostring(st.deserialize(t)) end,
    raw_tostring = function(t) return tostring(raw(t)) end,
    parse = parsed,
    tostring_and_parse = function(t)
        local text = tostring(st.deserialize(t))
        return text, parsed(text)
    end,
    deserialize = function(t)
        local ok, s = pcall(st.deserialize, t)
        if not ok then return false end
        return st.preserialize(s)
    end,
}

local function serve(name, input)
    local handle = assert(handlers[name], name)
    local items, out = canon.decode(input), {}
    for i = 1, #items do
        local results = table.pack(handle(items[i]))
        for j = 1, results.n do
            local enc = canon.encode(results[j])
            out[#out + 1] = #enc .. ":" .. enc
        end
    end
    return table.concat(out)
end

for header in io.lines() do
    local name, len = header:match("^(%S+) (%d+)$")
    local ok, out = pcall(serve, name, io.read(tonumber(len)))
    out = tostring(out)
    io.write(ok and "ok" or "error", " ", #out, "\\n", out)
    io.flush()
end
"""


class LuaServer:
    """A Lua process with Prosody's sources loaded, answering requests until closed."""

    def __init__(self) -> None:
        require_prosody()
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False, encoding="utf-8") as f:
            f.write(PRELUDE + LUA_SERVER)
            self.script = f.name
        self.proc = subprocess.Popen([LUA, self.script], stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def request(self, handler: str, data: bytes) -> bytes:
        assert self.proc.stdin and self.proc.stdout
        try:
            self.proc.stdin.write(b"%s %d\n" % (handler.encode(), len(data)) + data)
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # reported below
        status, _sep, size = self.proc.stdout.readline().partition(b" ")
        if not size:
            raise AssertionError(f"the Lua oracle died (exit {self.proc.wait()})")
        out = self.proc.stdout.read(int(size))
        if status != b"ok":
            raise AssertionError(f"Lua failed: {out.decode('utf-8', 'replace')}")
        return out

    def close(self) -> None:
        assert self.proc.stdin
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.close()
        self.proc.wait(timeout=10)
        os.unlink(self.script)


_server: list[LuaServer] = []


@pytest.fixture(scope="module", autouse=True)
def _close_lua_server() -> Iterator[None]:
    yield
    while _server:
        _server.pop().close()


def lua_each(handler: str, items: list[object], per_item: int = 1) -> list[tuple[bytes, ...]]:
    """Run a Lua handler over items; the canon bytes of its results, per_item of them per item."""
    if _server and _server[0].proc.poll() is not None:
        _server.pop().close()  # died in an earlier test: start afresh rather than fail them all
    if not _server:
        _server.append(LuaServer())
    raw = _server[0].request(handler, canon(dict(enumerate(items, 1))))
    values, pos = [], 0
    while pos < len(raw):
        colon = raw.index(b":", pos)
        end = colon + 1 + int(raw[pos:colon])
        values.append(raw[colon + 1 : end])
        pos = end
    assert len(values) == per_item * len(items)
    return [tuple(values[i : i + per_item]) for i in range(0, len(values), per_item)]


def canon_text(encoded: bytes) -> str:
    """The string a canon ``s<len>:<bytes>`` encodes, in our model."""
    match = re.match(rb"s(\d+):", encoded)
    assert match, encoded
    return encoded[match.end() :].decode("utf-8", "surrogateescape")


def ours_deserialized(table: object) -> object:
    """What our deserialize makes of a table, in the form the deserialize handler returns (False on error)."""
    try:
        return Element.deserialize(table, "test").preserialize()
    except StanzaError:
        return False


# ---------------------------------------------------------------------------------------------
# What an XML parser makes of a stanza's text: namespaces resolved, adjacent text merged, empty
# text gone; with raw_ws (Prosody's own text) also XML's normalization of raw TAB/CR/LF.


def _line_ends(value: str) -> str:
    return value.replace("\r\n", "\n").replace("\r", "\n")


def _attr_ws(value: str) -> str:
    return re.sub("[\t\n]", " ", _line_ends(value))


def parsed_form(element: Element, raw_ws: bool, parent_ns: str = "") -> Element:
    """The stanza an XML parser reads from element's text (see above); the same for canonical stanzas."""
    value = _attr_ws if raw_ws else str
    own_ns = element.attr.get("xmlns")
    ns = parent_ns if own_ns is None else value(own_ns)  # absent xmlns: the parent's namespace
    attr = {"xmlns": ns} if ns else {}
    for key, val in element.attr.items():
        if key != "xmlns":
            uri, sep, local = key.partition("\x01")
            attr[value(uri) + sep + local if sep else key] = value(val)
    children: list[Element | str] = []
    for child in element.children:
        if isinstance(child, Element):
            children.append(parsed_form(child, raw_ws, ns))
        elif children and isinstance(children[-1], str):
            children[-1] += child
        else:
            children.append(child)
    if raw_ws:
        children = [_line_ends(c) if isinstance(c, str) else c for c in children]
    return Element(element.name, attr, [c for c in children if c != ""])


# ---------------------------------------------------------------------------------------------
# Strategies.

# A fixed pool: drawing names from a regex made generation the slowest part of the suite.
names = st.sampled_from(["a", "b", "body", "x-y.z", "_u", "é", "中文", "B9", "message", "xmlnsish", "ns1"])
# Text is drawn as whole strings (one choice each), not character by character, for speed.
XML_CHARS = st.characters(min_codepoint=0x20, exclude_categories=("Cs",), exclude_characters="\ufffe\uffff")
# util.stanza refuses attribute names (URI included) holding any of <>&'" or a space.
URIS = ["urn:a", "urn:b", "http://example.com/ns?a=1;b=2", "urn:é:中"]
SPECIALS = "&<>'\" ];#x1é中😀\x7f\x85\u2028"


def texts(extra: str) -> st.SearchStrategy[str]:
    """Strings biased towards what needs escaping, plus the given extra characters."""
    specials = st.text(SPECIALS + extra, max_size=5)
    return st.one_of(specials, st.builds(lambda a, b, c: a + b + c, specials, st.text(XML_CHARS, max_size=3), specials))


def attr_dicts(text: st.SearchStrategy[str], uris: list[str], max_size: int) -> st.SearchStrategy[dict[str, str]]:
    keys = st.one_of(
        names,
        st.just("xmlns"),
        st.just("xml:lang"),
        st.builds(lambda uri, local: uri + "\x01" + local, st.sampled_from(uris), names),
    )
    # A list of pairs made into a dict (a repeated key just collapses): st.dictionaries, which
    # insists on distinct keys, was the costliest part of generation.
    return st.lists(st.tuples(keys, text), max_size=max_size).map(dict)


def elements(text: st.SearchStrategy[str], attrs: st.SearchStrategy[dict[str, str]]) -> st.SearchStrategy[Element]:
    return st.recursive(
        st.builds(Element, names, attrs),
        lambda kids: st.builds(Element, names, attrs, st.lists(st.one_of(text, kids), max_size=4)),
        max_leaves=8,
    )


def batches(element: st.SearchStrategy[Element]) -> st.SearchStrategy[list[Element]]:
    return st.lists(element, min_size=1, max_size=10)


WS = "\t\r\n"
# Accepted by util.stanza's checks though XML cannot carry them.
PROSODY_CONTROL = "\x14\x1f"
# (a): at most one attribute, so Lua's pairs order cannot matter; no TAB/CR/LF, where we differ.
ONE_ATTR_TEXT = texts(PROSODY_CONTROL)
ONE_ATTR = elements(ONE_ATTR_TEXT, attr_dicts(ONE_ATTR_TEXT, [*URIS, "urn:\x14"], max_size=1))
# Anything tostring can meet in memory: control characters and bytes that are not UTF-8.
RAW_TEXT = texts(PROSODY_CONTROL + "\x00\x01\x0b\udc80\udcff\udcc3")
RAW_ONE_ATTR = elements(RAW_TEXT, attr_dicts(RAW_TEXT, [*URIS, "urn:'&<>\"", "urn:\udcff"], max_size=1))
# (b), (c), (d): every character XML allows, any number of attributes.
XML_TEXT = texts(WS)
XML_STANZAS = elements(XML_TEXT, attr_dicts(XML_TEXT, [*URIS, "urn:tab\there"], max_size=4))
# Prosody writes that TAB raw; its parser reads it as a space, which it then refuses in a name.
PROSODY_XML_STANZAS = elements(XML_TEXT, attr_dicts(XML_TEXT, URIS, max_size=4))


# ---------------------------------------------------------------------------------------------
# Property tests against real Prosody.


@given(batches(ONE_ATTR))
def test_to_xml_is_prosody_tostring(stanzas: list[Element]) -> None:
    """(a) Byte for byte what Prosody's tostring writes for the same (deserialized) stanza."""
    results = lua_each("tostring", [s.preserialize() for s in stanzas])
    for stanza, (prosody,) in zip(stanzas, results):
        assert canon(stanza.to_xml()) == prosody, stanza


@given(batches(RAW_ONE_ATTR))
def test_to_xml_is_prosody_tostring_for_text_xml_cannot_carry(stanzas: list[Element]) -> None:
    """(a) Also for control characters and invalid UTF-8, which tostring writes as they are."""
    results = lua_each("raw_tostring", [s.preserialize() for s in stanzas])
    for stanza, (prosody,) in zip(stanzas, results):
        assert canon(stanza.to_xml()) == prosody, stanza


@given(batches(XML_STANZAS))
def test_prosody_parses_our_xml_back(stanzas: list[Element]) -> None:
    """(b) util.xml.parse of to_xml() gives the stanza back, TAB/CR/LF included; so does from_xml."""
    results = lua_each("parse", [s.to_xml() for s in stanzas])
    for stanza, (prosody,) in zip(stanzas, results):
        expected = parsed_form(stanza, raw_ws=False)
        assert prosody == canon(expected.preserialize()), stanza
        assert Element.from_xml(stanza.to_xml(), "test") == expected


@given(batches(PROSODY_XML_STANZAS))
def test_from_xml_reads_prosody_tostring(stanzas: list[Element]) -> None:
    """(c) from_xml of Prosody's tostring is the stanza (as far as XML carries it), as util.xml.parse reads it."""
    results = lua_each("tostring_and_parse", [s.preserialize() for s in stanzas], per_item=2)
    for stanza, (text, prosody_parsed) in zip(stanzas, results):
        ours = Element.from_xml(canon_text(text), "prosody")
        assert ours == parsed_form(stanza, raw_ws=True), canon_text(text)
        assert canon(ours.preserialize()) == prosody_parsed


@given(batches(elements(texts(WS + PROSODY_CONTROL), attr_dicts(XML_TEXT, URIS, max_size=4))))
def test_preserialized_round_trip_with_prosody(stanzas: list[Element]) -> None:
    """(d) Prosody's deserialize+preserialize of our table is the same table, and ours reads it back."""
    tables = [s.preserialize() for s in stanzas]
    results = lua_each("deserialize", tables)
    for stanza, table, (prosody,) in zip(stanzas, tables, results):
        assert prosody == canon(table), stanza
        assert Element.deserialize(table, "test") == stanza


# Tables as archives might hold them, good and bad: deserialize must accept and refuse exactly
# what Prosody's does, and build the same stanza.
ODD_TEXT = st.text(st.sampled_from(["a", "é", " ", "<", "|", "\t", "\x00", "\x01", "\x14", "\udcff"]), max_size=3)
ODD_SCALAR = st.one_of(st.integers(-3, 3), st.booleans(), st.just(1.5))


def mostly(good: st.SearchStrategy[object], *odd: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    """Good four times in five: a table fails as soon as one part of it is odd."""
    odd_one = st.one_of(*odd)
    return st.sampled_from([True, True, True, True, False]).flatmap(lambda ok: good if ok else odd_one)


# "|" keys come from plain names and "\x01" keys from URIs with a colon, so no legacy key can
# collide with a namespaced one (which would make Prosody's result depend on pairs order).
ODD_ATTR_KEY = mostly(
    names,
    ODD_TEXT.filter(lambda k: "\x01" not in k),
    st.builds(lambda a, b: a + "|" + b, st.sampled_from(["", "p", "q|"]), st.sampled_from(["", "n", "|m"])),
    st.builds(lambda uri, local: uri + "\x01" + local, st.sampled_from(URIS), names),
    st.integers(1, 3),
    st.builds(BoolKey, st.booleans()),
)
ODD_ATTR = st.lists(st.tuples(ODD_ATTR_KEY, mostly(XML_TEXT, ODD_TEXT, ODD_SCALAR)), max_size=3).map(dict)
MISSING = object()


def _odd_table(name: object, attr: object, children: list[object], gap: bool, extra: dict[object, object]) -> dict:
    table: dict[object, object] = dict(extra)
    if name is not MISSING:
        table["name"] = name
    if attr is not MISSING:
        table["attr"] = attr
    for index, child in enumerate(children, 1):
        table[index + 1 if gap and index > 1 else index] = child
    return table


def odd_tables() -> st.SearchStrategy[dict]:
    def table(kids: st.SearchStrategy[object]) -> st.SearchStrategy[dict]:
        return st.builds(
            _odd_table,
            mostly(names, ODD_TEXT, st.just(MISSING), st.integers(0, 1)),
            mostly(ODD_ATTR, st.just(MISSING), ODD_TEXT),
            st.lists(kids, max_size=3),
            st.booleans(),
            st.lists(
                st.tuples(st.sampled_from(["key", "when", "with", "tags", 2.5]), st.one_of(ODD_TEXT, ODD_SCALAR))
            ).map(dict),
        )

    leaf = mostly(XML_TEXT, ODD_TEXT, ODD_SCALAR)
    return st.recursive(table(leaf), lambda inner: table(st.one_of(leaf, inner)), max_leaves=6)


@given(st.lists(odd_tables(), min_size=1, max_size=10))
def test_deserialize_accepts_and_refuses_what_prosody_does(tables: list[dict]) -> None:
    """(d) For odd tables too: same stanza where Prosody makes one, StanzaError where it fails."""
    results = lua_each("deserialize", tables)
    for table, (prosody,) in zip(tables, results):
        assert canon(ours_deserialized(table)) == prosody, table


# ---------------------------------------------------------------------------------------------
# Writing XML.


def test_escaping_in_text_and_attributes() -> None:
    element = Element("a", {"b": "'\"&<>"}, ["'\"&<>]]>"])
    assert element.to_xml() == "<a b='&apos;&quot;&amp;&lt;&gt;'>&apos;&quot;&amp;&lt;&gt;]]&gt;</a>"


def test_namespaces_inherited_and_overridden() -> None:
    message = Element("message", {"xmlns": "jabber:client"})
    message.tag("body").text("hi")
    x = message.tag("x", {"xmlns": "urn:x"})
    x.tag("y", {"xmlns": "urn:x"})
    x.tag("z", {"xmlns": "jabber:client"})
    x.tag("none", {"xmlns": ""})
    assert message.to_xml() == (
        "<message xmlns='jabber:client'><body>hi</body>"
        "<x xmlns='urn:x'><y/><z xmlns='jabber:client'/><none xmlns=''/></x></message>"
    )
    back = Element.from_xml(message.to_xml(), "test")
    assert [c.attr.get("xmlns") for c in back.children] == ["jabber:client", "urn:x"]
    assert [c.attr.get("xmlns") for c in back.children[1].children] == ["urn:x", "jabber:client", None]


def test_namespaced_attributes_get_a_prefix_each() -> None:
    element = Element("a", {"urn:x\x01one": "1", "plain": "p", "urn:y\x01two": "2", "xml:lang": "en"})
    text = "<a xmlns:ns1='urn:x' ns1:one='1' plain='p' xmlns:ns2='urn:y' ns2:two='2' xml:lang='en'/>"
    assert element.to_xml() == text
    assert Element.from_xml(text, "test") == element
    assert list(Element.from_xml(text, "test").attr) == list(element.attr)  # document order kept


def test_xml_lang_and_other_xml_namespace_attributes_keep_their_prefix() -> None:
    element = Element.from_xml("<a xml:lang='de' xml:space='preserve'><xml:b/></a>", "test")
    assert element.attr == {"xml:lang": "de", "xml:space": "preserve"}
    assert element.children == [Element("b", {"xmlns": "http://www.w3.org/XML/1998/namespace"})]


def test_empty_elements_and_empty_text() -> None:
    assert Element("a").to_xml() == "<a/>"
    # An empty text node still makes the element non-empty, as in Prosody; parsing drops it.
    assert Element("a", {}, [""]).to_xml() == "<a></a>"
    assert Element.from_xml("<a></a>", "test") == Element("a")


def test_mixed_content_and_non_ascii() -> None:
    text = "<p>Grüße, <b>世界</b> 😀 &amp; <i/>more</p>"
    element = Element.from_xml(text, "test")
    assert element == Element("p", {}, ["Grüße, ", Element("b", {}, ["世界"]), " 😀 & ", Element("i"), "more"])
    assert element.to_xml() == text


def test_text_is_joined_between_tags() -> None:
    element = Element.from_xml("<a>x&amp;y\n<![CDATA[<z>]]>&#65;<b/>t</a>", "test")
    assert element.children == ["x&y\n<z>A", Element("b"), "t"]


def test_tab_cr_lf_written_as_character_references() -> None:
    element = Element("a", {"v": "1\t2\n3\r4\r\n"}, ["x\ty\nz\r\nw\r"])
    text = element.to_xml()
    assert text == "<a v='1&#9;2&#10;3&#13;4&#13;&#10;'>x\ty\nz&#13;\nw&#13;</a>"
    assert Element.from_xml(text, "test") == element
    (prosody,) = lua_each("parse", [text])[0]
    assert prosody == canon(element.preserialize())


def test_raw_whitespace_is_normalized_as_prosody_parser_does() -> None:
    # What Prosody itself writes: raw TAB/CR/LF. The parser turns them into spaces / LF.
    element = Element.from_xml("<a v='1\t2\n3\r\n4'>x\r\ny\rz</a>", "test")
    assert element == Element("a", {"v": "1 2 3 4"}, ["x\ny\nz"])


def test_text_xml_cannot_carry_is_written_raw() -> None:
    element = Element("a", {}, ["\x00\udcff\x14"])
    assert element.to_xml().encode("utf-8", "surrogateescape") == b"<a>\x00\xff\x14</a>"


# ---------------------------------------------------------------------------------------------
# Reading XML: what Prosody's parser accepts and refuses, and hostile input.

ACCEPTED = [
    "<a/>",
    " \n<a/>\n ",
    "<?xml version='1.0'?><a/>",
    "<?xml version='1.0' encoding='ISO-8859-1' standalone='no'?><a>\udce9</a>",
    "<?xml version='1.0' encoding='utf-8'?><a>é</a>",
    "\ufeff<a/>",
    "<p:a xmlns:p='urn:p' p:b='1'/>",
]
REFUSED = [
    ("", "no element found"),
    ("<a>", "no element found"),
    ("<a/><b/>", "junk after document element"),
    ("<a/>x", "junk after document element"),
    ("x<a/>", "not well-formed (invalid token)"),
    ("<p:a/>", "unbound prefix"),
    ("<a p:b='1'/>", "unbound prefix"),
    ("<a>&nbsp;</a>", "undefined entity"),
    ("<a b='1' b='2'/>", "duplicate attribute"),
    ("<!--hi--><a/>", "comment"),
    ("<a><!--hi--></a>", "comment"),
    ("<?php x?><a/>", "processing instruction"),
    ("<!DOCTYPE a><a/>", "DOCTYPE"),
    ("<?xml version='1.0' encoding='windows-1252'?><a/>", "unknown encoding"),
    ("<a>\udcff</a>", "the byte 0xFF, which is not valid UTF-8"),
    ("<a>\udcc3</a>", "not valid UTF-8"),
    ("<a>\x00</a>", "U+0000, which XML cannot carry"),
    ("<a>&#1;</a>", "reference to invalid character number"),
    ("<a b='\x1f'/>", "U+001F, which XML cannot carry"),
    ("<a xmlns:p='urn:a b' p:c='1'/>", "namespace 'urn:a b' of attribute 'c' holds a space"),
    ("<a xmlns:p='urn:a&amp;b' p:c='1'/>", "which Prosody refuses"),
    ("<a xmlns:p='urn:a\tb' p:c='1'/>", "namespace 'urn:a b'"),  # attribute-value normalization
]


def test_accepted_and_refused_like_prosody_parser() -> None:
    texts_ = ACCEPTED + [text for text, _reason in REFUSED]
    results = lua_each("parse", texts_)
    for text, (prosody,) in zip(ACCEPTED, results):
        assert prosody == canon(Element.from_xml(text, "test").preserialize()), text
    for (text, _reason), (prosody,) in zip(REFUSED, results[len(ACCEPTED) :]):
        assert prosody.startswith((b"t1{s5:errors", b"t1{s6:raiseds")), (text, prosody)


@pytest.mark.parametrize(("text", "reason"), REFUSED)
def test_refused_with_a_message_naming_the_source(text: str, reason: str) -> None:
    with pytest.raises(StanzaError, match=re.escape(reason)) as info:
        Element.from_xml(text, "prosodyarchive row 42")
    assert str(info.value).startswith("prosodyarchive row 42: ")
    assert info.value.source == "prosodyarchive row 42"


def test_latin1_declaration_is_honoured() -> None:
    assert Element.from_xml("<?xml version='1.0' encoding='ISO-8859-1'?><a>\udce9</a>", "t").children == ["é"]


def _billion_laughs() -> str:
    entities = ["<!ENTITY lol0 'lol'>"]
    entities += [f"<!ENTITY lol{i} '{f'&lol{i - 1};' * 10}'>" for i in range(1, 10)]
    return f"<?xml version='1.0'?><!DOCTYPE lolz [{''.join(entities)}]><lolz>&lol9;</lolz>"


HOSTILE = [
    _billion_laughs(),
    "<!DOCTYPE a [<!ENTITY x SYSTEM 'file:///etc/passwd'>]><a>&x;</a>",
    "<!DOCTYPE a SYSTEM 'http://example.com/a.dtd'><a/>",
    "<a>" * 200_000 + "</a>" * 200_000,
]


@pytest.mark.parametrize("text", HOSTILE, ids=["billion-laughs", "external-entity", "external-dtd", "deep"])
def test_hostile_xml_fails_fast(text: str) -> None:
    started = time.monotonic()
    with pytest.raises(StanzaError, match="hostile: "):
        Element.from_xml(text, "hostile")
    assert time.monotonic() - started < 2


def _nested(depth: int) -> str:
    return "<a>" * depth + "</a>" * depth


def test_nesting_limit_when_parsing() -> None:
    element = Element.from_xml(_nested(MAX_DEPTH), "test")
    assert element.to_xml() == _nested(MAX_DEPTH).replace("<a></a>", "<a/>")
    with pytest.raises(StanzaError, match=f"deeper than {MAX_DEPTH}"):
        Element.from_xml(_nested(MAX_DEPTH + 1), "test")


def _nested_table(depth: int) -> dict:
    root = table = {"name": "a", "attr": {}}
    for _level in range(depth - 1):
        table[1] = table = {"name": "a", "attr": {}}
    return root


def test_nesting_limit_when_deserializing() -> None:
    assert Element.deserialize(_nested_table(MAX_DEPTH), "test").preserialize() == _nested_table(MAX_DEPTH)
    for depth in (MAX_DEPTH + 1, 100_000):
        with pytest.raises(StanzaError, match=f"deeper than {MAX_DEPTH}"):
            Element.deserialize(_nested_table(depth), "test")


def test_deep_trees_built_in_code_never_recurse() -> None:
    root = leaf = Element("a")
    for _level in range(50_000):
        leaf = leaf.tag("a")
    copy = root.to_xml()
    assert copy.count("<a>") == 50_000
    assert root.preserialize()["name"] == "a"
    other = Element("a")
    other.children = root.children
    assert root == other
    assert repr(root).startswith("Element('<a><a>")


# ---------------------------------------------------------------------------------------------
# The preserialized form.


def test_preserialize_shape() -> None:
    stanza = Element("message", {"to": "a@b"}, ["x", Element("body", {}, ["hi"])])
    assert stanza.preserialize() == {
        "name": "message",
        "attr": {"to": "a@b"},
        1: "x",
        2: {"name": "body", "attr": {}, 1: "hi"},
    }


ARCHIVE_ITEM = {
    "name": "message",
    "attr": {"to": "a@b", "stamp": "2020-01-01T00:00:00Z", 3: "dropped", "urn:x|legacy": "1"},
    "key": "k1",
    "when": 1577836800,
    "with": "b@c",
    1: {"name": "body", "attr": {}, 1: "hi", 2: 7, 3: True, 4: ""},
    2: "tail",
    4: "after a gap",
}


def test_deserialize_leniency_mirrors_prosody() -> None:
    stanza = Element.deserialize(ARCHIVE_ITEM, "test")
    # Non-stanza fields, non-string keys, non-string/table children and anything past a gap
    # are ignored; the legacy "ns|name" key becomes "ns\x01name"; attr.stamp is the caller's.
    assert stanza == Element(
        "message",
        {"to": "a@b", "stamp": "2020-01-01T00:00:00Z", "urn:x\x01legacy": "1"},
        [Element("body", {}, ["hi", ""]), "tail"],
    )
    (prosody,) = lua_each("deserialize", [ARCHIVE_ITEM])[0]
    assert prosody == canon(stanza.preserialize())


BAD_TABLES = [
    ("a string", "must be a table, not string"),
    (None, "must be a table, not nil"),
    ({"attr": {}}, "invalid tag name at stanza: expected string, got nil"),
    ({"name": "", "attr": {}}, "empty string"),
    ({"name": "a b", "attr": {}}, "invalid characters"),
    ({"name": "a"}, "stanza has no attr table (got nil)"),
    ({"name": "a", "attr": "x"}, "no attr table (got string)"),
    ({"name": "a", "attr": {"x": 1}}, "invalid attribute value at stanza: expected string, got number"),
    ({"name": "a", "attr": {"|x": "1"}}, "invalid legacy attribute name"),
    (
        {"name": "a", "attr": {}, 1: {"name": "b", "attr": {}, 1: "\x01"}},
        "text value at stanza[1][1]: contains control",
    ),
    ({"name": "a", "attr": {}, 1: "\udcff"}, "contains invalid UTF-8"),
    ({"name": "a", "attr": {"v": "\udcc3("}}, "contains invalid UTF-8"),
    ({"name": "a\x00", "attr": {}}, "contains control characters"),
]


@pytest.mark.parametrize(("table", "reason"), BAD_TABLES)
def test_deserialize_refuses_with_a_message_naming_the_source(table: object, reason: str) -> None:
    with pytest.raises(StanzaError, match=re.escape(reason)) as info:
        Element.deserialize(table, "alice.list item 3")
    assert str(info.value).startswith("alice.list item 3: ")


def test_prosody_refuses_the_same_tables() -> None:
    tables = [table for table, _reason in BAD_TABLES if isinstance(table, dict)]
    for table, (prosody,) in zip(tables, lua_each("deserialize", tables)):
        assert prosody == canon(False), table


def test_lenient_deserialize_carries_what_prosody_would_refuse() -> None:
    table = {"name": "a", 1: "\udcff\x01", 2: {"name": "b", "attr": {"v": "\x00"}}}
    stanza = Element.deserialize(table, "test", strict=False)
    assert stanza == Element("a", {}, ["\udcff\x01", Element("b", {"v": "\x00"})])
    assert stanza.to_xml().encode("utf-8", "surrogateescape") == b"<a>\xff\x01<b v='\x00'/></a>"
    # Still a stanza: a name and string attribute values are required.
    for bad in ({"attr": {}}, {"name": "a", "attr": {"v": 1}}, {"name": "a", "attr": 3}):
        with pytest.raises(StanzaError, match=r"^test: "):
            Element.deserialize(bad, "test", strict=False)
    with pytest.raises(StanzaError, match="not valid UTF-8"):
        Element.from_xml(stanza.to_xml(), "test")


def test_builder_and_repr() -> None:
    stanza = Element("iq", {"type": "get"})
    stanza.tag("query", {"xmlns": "jabber:iq:roster"}).text("x")
    assert stanza == Element("iq", {"type": "get"}, [Element("query", {"xmlns": "jabber:iq:roster"}, ["x"])])
    assert stanza != Element("iq", {"type": "set"}, stanza.children)
    assert stanza != Element("iq", {"type": "get"}, ["x"])
    assert repr(stanza) == "Element(\"<iq type='get'><query xmlns='jabber:iq:roster'>x</query></iq>\")"


# ---------------------------------------------------------------------------------------------
# The fast paths against straightforward references. deserialize tries the common case first
# (_deserialize_common) and hands anything else to the checked walk (_deserialize_checked, the
# reference), which must then make the same stanza or raise the same error; to_xml is checked
# against the first, plain version below (a str.translate per string).

_REF_ESCAPE = {"&": "&amp;", "<": "&lt;", ">": "&gt;", "'": "&apos;", '"': "&quot;"}
_REF_TEXT = str.maketrans({**_REF_ESCAPE, "\r": "&#13;"})
_REF_ATTR = str.maketrans({**_REF_ESCAPE, "\t": "&#9;", "\n": "&#10;", "\r": "&#13;"})


def _ref_start_tag(element: Element, parent_ns: str | None, out: list[str]) -> None:
    out.append("<" + element.name)
    nsid = 0
    for key, value in element.attr.items():
        if "\x01" in key:
            ns, local = key.split("\x01", 1)
            nsid += 1
            out.append(f" xmlns:ns{nsid}='{ns.translate(_REF_ATTR)}' ns{nsid}:{local}='{value.translate(_REF_ATTR)}'")
        elif not (key == "xmlns" and value == parent_ns):
            out.append(f" {key}='{value.translate(_REF_ATTR)}'")
    out.append(">" if element.children else "/>")


def reference_to_xml(root: Element) -> str:
    """to_xml as first written: one iterator per open element, one str.translate per string."""
    out: list[str] = []
    _ref_start_tag(root, None, out)
    stack = [(root, iter(root.children))] if root.children else []
    end = object()
    while stack:
        element, rest = stack[-1]
        child = next(rest, end)
        if child is end:
            out.append(f"</{element.name}>")
            stack.pop()
        elif isinstance(child, Element):
            _ref_start_tag(child, element.attr.get("xmlns"), out)
            if child.children:
                stack.append((child, iter(child.children)))
        else:
            out.append(child.translate(_REF_TEXT))
    return "".join(out)


def shape(root: Element) -> list[object]:
    """Everything about a tree, with types and attribute order (which Element's == ignores)."""
    out: list[object] = []
    stack: list[object] = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, Element):
            out.append((type(node.name), node.name, [(type(k), k, type(v), v) for k, v in node.attr.items()]))
            out.append(len(node.children))
            stack.extend(reversed(node.children))
        else:
            out.append((type(node), node))
    return out


def outcome(fn: Callable[[], object]) -> tuple[object, ...]:
    """What fn makes (a stanza's shape, or text) or raises (type and message)."""
    try:
        made = fn()
    except Exception as e:  # the point is to compare whatever is raised
        return ("raised", type(e), str(e))
    return ("made", shape(made) if isinstance(made, Element) else made)


def _both_ways(table: object, strict: bool) -> tuple[tuple[object, ...], tuple[object, ...]]:
    fast = outcome(lambda: Element.deserialize(table, "t.list item 1", strict=strict))
    reference = outcome(lambda: stanza_module._deserialize_checked(table, "t.list item 1", strict))
    return fast, reference


@given(st.lists(odd_tables(), min_size=1, max_size=10), st.booleans())
def test_deserialize_is_the_checked_walk(tables: list[dict], strict: bool) -> None:
    """Same stanza (types and attribute order too) or same error, message included, as the reference."""
    for table in tables:
        fast, reference = _both_ways(table, strict)
        assert fast == reference, table


# Tables the common path takes, mostly: known and new names, several attributes, namespaced and
# xml: keys, text Prosody's check_text refuses (strict refuses it, lenient carries it).
COMMON_TEXT = texts(WS + PROSODY_CONTROL + "\x00\x01\x0b\udc80\udcff\udcc3")
COMMON_KEYS = st.one_of(
    names, st.just("xmlns"), st.just("xml:lang"), st.builds(lambda u, n: u + "\x01" + n, st.sampled_from(URIS), names)
)
COMMON_ATTRS = st.lists(st.tuples(COMMON_KEYS, COMMON_TEXT), max_size=5).map(dict)
COMMON_STANZAS = elements(COMMON_TEXT, COMMON_ATTRS)


@given(st.lists(COMMON_STANZAS, min_size=1, max_size=10), st.booleans())
def test_deserialize_common_tables_as_the_checked_walk(stanzas: list[Element], strict: bool) -> None:
    for table in (s.preserialize() for s in stanzas):
        fast, reference = _both_ways(table, strict)
        assert fast == reference, table
        if not strict:  # what preserialize makes always takes the common path when lenient
            assert stanza_module._deserialize_common(table, strict) is not None


def test_usual_archive_items_take_the_common_path() -> None:
    table = Element.deserialize(ARCHIVE_ITEM, "test").preserialize()
    for strict in (True, False):
        common = stanza_module._deserialize_common(table, strict)
        assert common is not None
        assert shape(common) == shape(stanza_module._deserialize_checked(table, "test", strict))


class _Str(str):
    """A string subclass: accepted as a string, but left to the checked walk."""


class _Dict(dict):
    """A table subclass: likewise."""


SUBCLASS_AND_EDGE_TABLES = [
    {"name": _Str("a"), "attr": {}},
    {"name": "a", "attr": {_Str("b"): _Str("c")}, 1: _Str("t")},
    {"name": "a", "attr": _Dict(b="c"), 1: _Dict(name="b", attr={})},
    _Dict(name="a", attr={}),
    {"name": "a", "attr": {"b": "c"}, 1: {"name": "b", "attr": {"x|y": "1", "x\x01y": "2", 7: "z"}}},
    {"name": "a", "attr": {"b": "c\udcc3\udca9"}, 1: "\udcc3\udca9"},  # é as raw bytes: valid UTF-8
    {"name": "\udcc3\udca9", "attr": {"\udcc3\udca9": "v"}},
    {"name": "a", "attr": None},
    {"name": "a", "attr": False},
    {"name": {}, "attr": {}},
    {"name": "a", "attr": {"b": "c", "d": {}}},
    _nested_table(MAX_DEPTH),
    _nested_table(MAX_DEPTH + 1),
]


@pytest.mark.parametrize("table", SUBCLASS_AND_EDGE_TABLES)
@pytest.mark.parametrize("strict", [True, False])
def test_deserialize_edge_cases_as_the_checked_walk(table: object, strict: bool) -> None:
    fast, reference = _both_ways(table, strict)
    assert fast == reference


def test_known_names_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stanza_module, "_KNOWN_MAX", 3)
    monkeypatch.setattr(stanza_module, "_KNOWN_TAGS", set())
    monkeypatch.setattr(stanza_module, "_KNOWN_ATTRS", set())
    for round_ in range(3):
        for i in range(10):
            table = {"name": f"t{i}", "attr": {f"a{i}": "1", f"b{round_}": "2"}, 1: {"name": "a b", "attr": {}}}
            fast, reference = _both_ways(table, strict=False)
            assert fast == reference
            assert fast[0] == "raised"
            assert Element.deserialize({"name": f"t{i}", "attr": {f"a{i}": "1"}}, "t") == Element(
                f"t{i}", {f"a{i}": "1"}
            )
            assert len(stanza_module._KNOWN_TAGS) <= 3
            assert len(stanza_module._KNOWN_ATTRS) <= 3
    assert "a b" not in stanza_module._KNOWN_TAGS


# For to_xml: xmlns values from a small pool, so that children often inherit their parent's.
XMLNS_POOL = st.sampled_from(["", "jabber:client", "urn:a", "urn:a&'"])
REF_ATTRS = st.lists(
    st.one_of(st.tuples(COMMON_KEYS, COMMON_TEXT), st.tuples(st.just("xmlns"), XMLNS_POOL)), max_size=5
).map(dict)


@given(batches(elements(COMMON_TEXT, REF_ATTRS)))
def test_to_xml_is_the_plain_version(stanzas: list[Element]) -> None:
    for stanza in stanzas:
        assert stanza.to_xml() == reference_to_xml(stanza)


def _attr_set_to(attr: object) -> Element:
    element = Element("a", {}, [Element("b")])
    element.attr = attr  # type: ignore[assignment]  # not a stanza, on purpose
    return element


@pytest.mark.parametrize(
    "element",
    [
        _attr_set_to([]),
        _attr_set_to(None),
        Element("a", {}, [_attr_set_to([])]),
        Element("a", {"b": 1}),
        Element("a", {"b": b"x"}),
        Element("a", {"b": None}),
        Element("a", {"urn:x\x01b": 1}),
        Element("a", {1: "x"}),
        Element("a", {}, [1]),
        Element("a", {}, [b"x"]),
        Element("a", {}, [Element("b", {}, [None])]),
        Element(1),
        Element(1, {"b": "c"}, ["x"]),
        Element("a", {}, [Element(None)]),
        Element("a", None, ["x", Element("b", {"c": "'"}, [_Str("<t>")])]),
    ],
)
def test_to_xml_fails_as_the_plain_version_on_what_is_not_a_stanza(element: Element) -> None:
    assert outcome(element.to_xml) == outcome(lambda: reference_to_xml(element))


def test_from_xml_joins_text_expat_hands_over_in_pieces() -> None:
    # Longer than pyexpat's text buffer, with line ends, references and CDATA along the way.
    long_text = "x&amp;y\r\n" * 3000 + "<![CDATA[<z>]]>" + "é" * 20000
    element = Element.from_xml(f"<a>{long_text}<b/>{long_text}</a>", "test")
    expected = ("x&y\n" * 3000) + "<z>" + "é" * 20000
    assert element.children == [expected, Element("b"), expected]


def _xml_char(c: str) -> bool:
    """XML 1.0's Char production."""
    return c in "\t\n\r" or " " <= c <= "\ud7ff" or "\ue000" <= c <= "\ufffd" or c >= "\U00010000"


@given(st.text(alphabet=st.characters(blacklist_categories=())))
def test_xml_text_problem_finds_what_xml_cannot_carry(text: str) -> None:
    # The quick pass (isprintable) may only clear text that XML 1.0's Char production clears.
    bad = [c for c in text if not _xml_char(c)]
    problem = stanza_module.xml_text_problem(text)
    assert (problem is None) == (not bad)
    if bad:
        code = ord(bad[0])
        assert (f"byte 0x{code - 0xDC00:02X}" if 0xDC80 <= code <= 0xDCFF else f"U+{code:04X}") in problem
