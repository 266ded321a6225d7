# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Prosody's stanzas (util/stanza.lua) as Python values, in both stored forms.

* The *preserialized table* (``st.preserialize``/``st.deserialize``), which internal storage
  keeps in ``.list`` archive files: ``{"name": ..., "attr": {...}, 1: child, 2: ...}`` in the
  luadata model.
* *XML text* (``tostring(stanza)``), which SQL storage keeps and reads back with util/xml.lua.

Attribute keys use Prosody's form: a namespaced attribute is ``"<namespace-uri>\\x01<local>"``,
attributes in the XML namespace are ``"xml:<local>"`` (``xml:lang``), and an element's namespace
is its ``xmlns`` attribute, absent meaning "inherited from the parent" as in Prosody. So, as
with Prosody, a child without ``xmlns`` under a namespaced parent reads back from XML with the
parent's ``xmlns`` set, and ``xmlns=""`` reads back as no ``xmlns``.

``from_xml`` reads as util/xml.lua does (what SQL storage uses, not the stricter stream parser):
an XML declaration is fine, but a DOCTYPE, comments and processing instructions are refused, and
so is a namespaced attribute whose namespace holds a space or one of ``<>&'"`` (util.stanza
refuses such attribute names, so Prosody's parser raises there).

Deliberate differences from Prosody, all on the writing side and all invisible to its parser:

* Attribute order is the dict's insertion order (Prosody uses ``pairs``, which is arbitrary).
* TAB, LF and CR in attribute values are written as ``&#9;``, ``&#10;``, ``&#13;`` and CR in text
  as ``&#13;``. Prosody writes them raw, and an XML parser then turns them into spaces (attribute
  values) or LF (text), so Prosody's own text does not survive a round trip; ours does.

Other characters XML cannot carry (control characters, bytes that are not UTF-8, which our
strings hold as lone surrogates) are written raw, as Prosody writes them: such a stanza has no
valid XML form, and ``from_xml`` (like Prosody's parser) rejects the result. ``xml_text_problem``
tells, before anything is stored, whether a text holds such a character: exactly XML 1.0's
excluded characters, which are also exactly what Prosody's parser (LuaExpat) refuses.

Nesting is limited to MAX_DEPTH elements when reading either form; every walk over a tree is
iterative, so no input can raise RecursionError here.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Union
from xml.parsers import expat

from .errors import DecodeError
from .luadata import lua_type

# Real stanzas nest a handful of levels; this keeps consumers of the trees (serializers that
# recurse, for one) far from Python's recursion limit while accepting anything plausible.
MAX_DEPTH = 256

XML_NS = "http://www.w3.org/XML/1998/namespace"
_NS_SEP = "\x01"

# util/stanza.lua's check_name/check_text: the Lua class [^\9\10\13\20-\255] is decimal, so the
# bytes 0x00-0x08, 0x0B, 0x0C and 0x0E-0x13 are refused (0x14-0x1F pass, though XML refuses them).
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x13]")
_CONTROL_ATTR_NAME = re.compile("[\x00\x02-\x08\x0b\x0c\x0e-\x13]")
_BAD_NAME_CHARS = re.compile("[<>& '\"]")
# Characters an XML 1.0 document cannot hold, literally or as a character reference.
_NOT_XML_CHAR = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")

# Encodings expat knows itself; LuaExpat installs no handler for others, Python's pyexpat does.
_EXPAT_ENCODINGS = frozenset({"UTF-8", "UTF-16", "UTF-16BE", "UTF-16LE", "ISO-8859-1", "US-ASCII"})

_END = object()
_ESCAPE = {"&": "&amp;", "<": "&lt;", ">": "&gt;", "'": "&apos;", '"': "&quot;"}
_TEXT_ESCAPE = str.maketrans({**_ESCAPE, "\r": "&#13;"})
_ATTR_ESCAPE = str.maketrans({**_ESCAPE, "\t": "&#9;", "\n": "&#10;", "\r": "&#13;"})


class StanzaError(DecodeError):
    """A stanza that cannot be read from XML text or from its preserialized table."""


Child = Union["Element", str]


class Element:
    """One XML element of a stanza: ``name``, ``attr`` (Prosody's keys) and ``children``."""

    __slots__ = ("attr", "children", "name")

    def __init__(self, name: str, attr: dict[str, str] | None = None, children: list[Child] | None = None) -> None:
        self.name = name
        self.attr = {} if attr is None else attr
        self.children = [] if children is None else children

    # -- building ---------------------------------------------------------------------------

    def tag(self, name: str, attr: dict[str, str] | None = None) -> Element:
        """Append a child element and return it (not self, unlike Prosody's cursor)."""
        child = Element(name, attr)
        self.children.append(child)
        return child

    def text(self, text: str) -> Element:
        """Append a text node and return self."""
        self.children.append(text)
        return self

    # -- comparing --------------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Element):
            return NotImplemented
        stack = [(self, other)]
        while stack:
            a, b = stack.pop()
            if a.name != b.name or a.attr != b.attr or len(a.children) != len(b.children):
                return False
            for x, y in zip(a.children, b.children):
                if isinstance(x, Element) and isinstance(y, Element):
                    stack.append((x, y))
                elif isinstance(x, Element) or isinstance(y, Element) or x != y:
                    return False
        return True

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"Element({self.to_xml()!r})"

    # -- XML text -----------------------------------------------------------------------------

    def to_xml(self) -> str:
        """The XML text Prosody's ``tostring(stanza)`` writes (see the module notes for how it differs)."""
        out: list[str] = []
        _start_tag(self, None, out)
        stack = [(self, iter(self.children))] if self.children else []
        while stack:
            element, rest = stack[-1]
            child = next(rest, _END)
            if child is _END:
                out.append(f"</{element.name}>")
                stack.pop()
            elif isinstance(child, Element):
                _start_tag(child, element.attr.get("xmlns"), out)
                if child.children:
                    stack.append((child, iter(child.children)))
            else:
                out.append(child.translate(_TEXT_ESCAPE))
        return "".join(out)

    @classmethod
    def from_xml(cls, text: str, source: str) -> Element:
        """Parse XML text as Prosody's util/xml.lua ``parse`` does (as SQL storage reads ``xml`` values)."""
        if not isinstance(text, str):
            raise StanzaError(f"expected XML text, got {type(text).__name__}", source)
        try:
            # Bytes, as LuaExpat gets them, so that an encoding declaration means what it means there.
            data = text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raise StanzaError("text holds characters that are not in any encoding", source) from None
        return _XmlReader(source).parse(data, text)

    # -- preserialized table ------------------------------------------------------------------

    def preserialize(self) -> dict[Any, Any]:
        """The table ``st.preserialize`` makes: ``{"name", "attr", 1: child, ...}``."""
        root: dict[Any, Any] = {"name": self.name, "attr": dict(self.attr)}
        stack = [(self, root)]
        while stack:
            element, table = stack.pop()
            for index, child in enumerate(element.children, 1):
                if isinstance(child, Element):
                    sub: dict[Any, Any] = {"name": child.name, "attr": dict(child.attr)}
                    table[index] = sub
                    stack.append((child, sub))
                else:
                    table[index] = child
        return root

    @classmethod
    def deserialize(cls, table: object, source: str, strict: bool = True) -> Element:
        """Build a stanza from its preserialized table, accepting what ``st.deserialize`` accepts.

        Like Prosody: other keys (``key``, ``when``, ``with``...) are ignored, children are read
        from 1 up to the first missing index, children that are neither text nor table are
        skipped, attributes with non-string keys are dropped, and legacy ``ns|name`` keys become
        ``ns\\x01name``. With ``strict`` (Prosody's behaviour) names and text are checked as
        util/stanza.lua checks them, so control characters and invalid UTF-8 are refused and a
        missing ``attr`` table is an error; without it only the shape and the names are checked,
        so such text and attribute values are carried as is and a missing ``attr`` means none.
        """
        if not isinstance(table, dict):
            raise StanzaError(f"a stanza must be a table, not {lua_type(table)}", source)
        root = _element_from_table(table, "stanza", source, strict)
        stack = [(table, root, "stanza", 1)]
        while stack:
            table, element, where, depth = stack.pop()
            index = 1
            while table.get(index) is not None:
                child = table[index]
                if isinstance(child, str):
                    if strict:
                        _check_text(child, "text", f"{where}[{index}]", source)
                    element.children.append(child)
                elif isinstance(child, dict):
                    child_where = f"{where}[{index}]"
                    if depth >= MAX_DEPTH:
                        raise StanzaError(f"stanza nested deeper than {MAX_DEPTH} elements", source)
                    sub = _element_from_table(child, child_where, source, strict)
                    element.children.append(sub)
                    stack.append((child, sub, child_where, depth + 1))
                index += 1
        return root


def _start_tag(element: Element, parent_ns: str | None, out: list[str]) -> None:
    """Write ``<name attrs`` and ``/>`` or ``>``, declaring a prefix per namespaced attribute."""
    out.append("<" + element.name)
    nsid = 0
    for key, value in element.attr.items():
        if _NS_SEP in key:
            ns, local = key.split(_NS_SEP, 1)
            nsid += 1
            out.append(
                f" xmlns:ns{nsid}='{ns.translate(_ATTR_ESCAPE)}' ns{nsid}:{local}='{value.translate(_ATTR_ESCAPE)}'"
            )
        elif not (key == "xmlns" and value == parent_ns):
            out.append(f" {key}='{value.translate(_ATTR_ESCAPE)}'")
    out.append(">" if element.children else "/>")


def _valid_utf8(value: str) -> bool:
    """Whether the Lua string behind ``value`` is valid UTF-8 (as util.encodings.utf8.valid says)."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8", "surrogateescape").decode("utf-8")
    except UnicodeError:
        return False
    return True


def _check_text(value: object, kind: str, where: str, source: str) -> None:
    """util/stanza.lua's check_text: a string without control characters, valid UTF-8."""
    if not isinstance(value, str):
        raise StanzaError(f"invalid {kind} value at {where}: expected string, got {lua_type(value)}", source)
    if _CONTROL.search(value):
        raise StanzaError(f"invalid {kind} value at {where}: contains control characters", source)
    if not _valid_utf8(value):
        raise StanzaError(f"invalid {kind} value at {where}: contains invalid UTF-8", source)


def _check_name(value: object, kind: str, where: str, source: str) -> None:
    """util/stanza.lua's check_name for a tag or attribute name."""
    if not isinstance(value, str):
        raise StanzaError(f"invalid {kind} name at {where}: expected string, got {lua_type(value)}", source)
    problem = None
    if not value:
        problem = "empty string"
    elif _BAD_NAME_CHARS.search(value):
        problem = "contains invalid characters"
    elif (_CONTROL_ATTR_NAME if kind == "attribute" else _CONTROL).search(value):
        problem = "contains control characters"
    elif not _valid_utf8(value):
        problem = "contains invalid UTF-8"
    if problem:
        raise StanzaError(f"invalid {kind} name {value!r} at {where}: {problem}", source)


def _element_from_table(table: dict[Any, Any], where: str, source: str, strict: bool) -> Element:
    """One element (no children yet) from a preserialized table."""
    name = table.get("name")
    raw_attr = table.get("attr")
    if raw_attr is None and not strict:
        raw_attr = {}
    if not isinstance(raw_attr, dict):
        raise StanzaError(f"{where} has no attr table (got {lua_type(raw_attr)})", source)
    attr: dict[str, str] = {}
    for key, value in raw_attr.items():
        if not isinstance(key, str):
            continue  # Prosody drops these silently
        if "|" in key and _NS_SEP not in key:
            # Pre-0.9 form "ns|name"; Prosody fails (nil concatenation) when either part is empty.
            ns, _sep, local = key.partition("|")
            if not ns or not local:
                raise StanzaError(f"invalid legacy attribute name {key!r} at {where}", source)
            key = ns + _NS_SEP + local
        attr[key] = value
    if strict:
        _check_name(name, "tag", where, source)
        for key, value in attr.items():
            _check_name(key, "attribute", where, source)
            _check_text(value, "attribute", where, source)
    else:
        # Names are still checked: one Prosody refuses would make to_xml write text that is not
        # XML at all, which a destination's check for characters (xml_text_problem) cannot see.
        _check_name(name, "tag", where, source)
        for key, value in attr.items():
            _check_name(key, "attribute", where, source)
            if not isinstance(value, str):
                raise StanzaError(f"attribute {key!r} at {where} is a {lua_type(value)}, not a string", source)
    return Element(name, attr)


class _XmlReader:
    """One parse of XML text with the handlers util/xml.lua installs, building Elements."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.root: Element | None = None
        self.stack: list[Element] = []
        self.chardata: list[str] = []

    def parse(self, data: bytes, text: str) -> Element:
        parser = expat.ParserCreate(namespace_separator=_NS_SEP)
        parser.ordered_attributes = True
        parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
        parser.StartElementHandler = self._start
        parser.EndElementHandler = self._end
        parser.CharacterDataHandler = self._chardata
        parser.XmlDeclHandler = self._xml_decl
        # Prosody aborts on these (the DOCTYPE one is what stops entity bombs and external entities).
        parser.StartDoctypeDeclHandler = self._refuse("a DOCTYPE declaration")
        parser.EntityDeclHandler = self._refuse("an entity declaration")
        parser.ExternalEntityRefHandler = self._refuse("an external entity")
        parser.CommentHandler = self._refuse("a comment")
        parser.ProcessingInstructionHandler = self._refuse("a processing instruction")
        try:
            parser.Parse(data, True)
        except expat.ExpatError as e:
            raise StanzaError(f"not well-formed XML: {_explain(e, text)}", self.source) from None
        except RecursionError:  # not expected (handlers do not recurse), but never let it escape
            raise StanzaError("XML nested too deeply", self.source) from None
        if self.root is None:  # expat reports "no element found" first; kept for safety
            raise StanzaError("no element found", self.source)
        return self.root

    def _refuse(self, what: str) -> Callable[..., None]:
        def handler(*_args: object) -> None:
            raise StanzaError(f"XML with {what} is not accepted (Prosody's parser refuses it)", self.source)

        return handler

    def _xml_decl(self, version: str | None, encoding: str | None, standalone: int) -> None:
        if encoding is not None and encoding.upper() not in _EXPAT_ENCODINGS:
            raise StanzaError(f"unknown encoding {encoding!r} in the XML declaration", self.source)

    def _flush_text(self) -> None:
        # LuaExpat merges character data between two tags into one string, as does Prosody.
        if self.chardata:
            self.stack[-1].children.append("".join(self.chardata))
            self.chardata = []

    def _start(self, tagname: str, attributes: list[str]) -> None:
        if len(self.stack) >= MAX_DEPTH:
            raise StanzaError(f"XML nested deeper than {MAX_DEPTH} elements", self.source)
        if self.stack:
            self._flush_text()
        ns, sep, local = tagname.partition(_NS_SEP)
        attr: dict[str, str] = {}
        if sep:
            name = local
            attr["xmlns"] = ns
        else:
            name = ns
        for i in range(0, len(attributes), 2):
            key = attributes[i]
            ns, sep, local = key.partition(_NS_SEP)
            if sep and ns == XML_NS:
                key = "xml:" + local
            elif sep and _BAD_NAME_CHARS.search(ns):
                # util.stanza checks "<uri>\x01<local>" as a name, so Prosody's parser raises here.
                raise StanzaError(
                    f"namespace {ns!r} of attribute {local!r} holds a space or one of <>&'\", which Prosody refuses",
                    self.source,
                )
            attr[key] = attributes[i + 1]
        element = Element(name, attr)
        if self.stack:
            self.stack[-1].children.append(element)
        else:
            self.root = element
        self.stack.append(element)

    def _end(self, _tagname: str) -> None:
        self._flush_text()
        self.stack.pop()

    def _chardata(self, data: str) -> None:
        if self.stack:
            self.chardata.append(data)


def xml_text_problem(text: str) -> str | None:
    """Why ``text`` cannot be in an XML document, literally or escaped ("holds the byte 0xFF,
    which is not valid UTF-8"), or None: its first character outside XML 1.0's Char production
    (control characters but TAB, LF and CR; U+FFFE and U+FFFF; bytes that are not UTF-8)."""
    bad = _NOT_XML_CHAR.search(text)
    if bad is None:
        return None
    char = bad.group()
    if "\udc80" <= char <= "\udcff":
        return f"holds the byte 0x{ord(char) - 0xDC00:02X}, which is not valid UTF-8"
    return f"holds the character U+{ord(char):04X}, which XML cannot carry"


def _explain(error: expat.ExpatError, text: str) -> str:
    """Expat's message, plus the likely reason when the text holds what XML cannot carry."""
    message = f"{expat.ErrorString(error.code)} (line {error.lineno}, column {error.offset + 1})"
    problem = xml_text_problem(text)
    if problem:
        message += f"; the text {problem}"
    return message
