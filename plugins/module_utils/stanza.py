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

_ESCAPE = {"&": "&amp;", "<": "&lt;", ">": "&gt;", "'": "&apos;", '"': "&quot;"}
_TEXT_ESCAPE = str.maketrans({**_ESCAPE, "\r": "&#13;"})
_ATTR_ESCAPE = str.maketrans({**_ESCAPE, "\t": "&#9;", "\n": "&#10;", "\r": "&#13;"})
# What the two tables above replace. Most values need no escaping, and one search tells so far
# faster than str.translate, which looks every character up in a dict.
_TEXT_SPECIAL = re.compile("[&<>'\"\r]")
_ATTR_SPECIAL = re.compile("[&<>'\"\t\n\r]")

# Deserializing takes a fast path for the common case and leaves anything else (and every error,
# with its message) to the checked walk. A text or attribute value that holds none of these
# passes check_text: a string without surrogates is always valid UTF-8.
_TEXT_SUSPECT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x13\ud800-\udfff]")
# Names found valid, so that the few names archives hold ("message", "body", "to", "xml:lang"...)
# are checked once per process, not once per element. Attribute names here can also be used as
# they are (no legacy "ns|name" form). Cleared when full: endless distinct names then cost no
# more than the checks they would cost anyway.
_KNOWN_TAGS: set[str] = set()
_KNOWN_ATTRS: set[str] = set()
_KNOWN_MAX = 4096


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
        # Per open element: its children still to write and its xmlns (what its children inherit).
        stack = [(self, iter(self.children), self.attr.get("xmlns"))] if self.children else []
        while stack:
            element, rest, ns = stack[-1]
            # A for loop over the shared iterator: leaves and text cost no stack work, and after
            # a nested element is done the loop resumes where it broke off.
            for child in rest:
                if isinstance(child, Element):
                    _start_tag(child, ns, out)
                    kids = child.children
                    if not kids:
                        continue
                    if len(kids) == 1 and not isinstance(kids[0], Element):
                        # The commonest element with content, a <body> and its text: no stacking.
                        out.append(_escape_text(kids[0]))
                        out.append(f"</{child.name}>")
                        continue
                    stack.append((child, iter(kids), child.attr.get("xmlns")))
                    break
                else:
                    out.append(_escape_text(child))
            else:
                out.append(f"</{element.name}>")
                stack.pop()
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
        root = _deserialize_common(table, strict)
        return _deserialize_checked(table, source, strict) if root is None else root


def _deserialize_checked(table: object, source: str, strict: bool) -> Element:
    """``Element.deserialize`` step by step, every part checked: the reference, and what raises its errors."""
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


def _deserialize_common(table: object, strict: bool) -> Element | None:
    """``Element.deserialize`` for the common case, or None for anything else (left to the checked walk).

    Plain dicts and strings only, names already known or valid as they are, every attribute
    value a string (and in strict mode no text that check_text would have to look at closely):
    then the checked walk would build the same element, so its per-part ``where`` strings and
    checks are skipped. Anything else, an error included, is left to ``_deserialize_checked``,
    which reads it anew, so the results and the errors are its own.
    """
    if type(table) is not dict:  # pylint: disable=unidiomatic-typecheck
        return None
    root = _common_element(table, strict)
    if root is None:
        return None
    stack = [(table, root, 1)]
    while stack:
        table, element, depth = stack.pop()
        children = element.children
        index = 1
        child = table.get(1)
        while child is not None:
            kind = type(child)
            if kind is str:
                if strict and _TEXT_SUSPECT.search(child):
                    return None
                children.append(child)
            elif kind is dict:
                if depth >= MAX_DEPTH:
                    return None
                sub = _common_element(child, strict)
                if sub is None:
                    return None
                children.append(sub)
                stack.append((child, sub, depth + 1))
            elif isinstance(child, (str, dict)):
                return None  # a subclass: rare enough to leave to the checked walk
            index += 1
            child = table.get(index)
    return root


def _common_element(table: dict[Any, Any], strict: bool) -> Element | None:
    """One element (no children yet) as ``_element_from_table`` makes it, or None if not a common case."""
    name = table.get("name")
    if type(name) is not str or (name not in _KNOWN_TAGS and not _learn_name(name, "tag")):  # pylint: disable=unidiomatic-typecheck
        return None
    raw_attr = table.get("attr")
    if type(raw_attr) is not dict:  # pylint: disable=unidiomatic-typecheck
        # Lenient mode reads a missing attr table as an empty one; anything else is an error.
        return Element(name, {}) if raw_attr is None and not strict else None
    attr = dict(raw_attr)
    if attr:
        # One subset test in C for the usual case, where every key is a known name.
        if not attr.keys() <= _KNOWN_ATTRS:
            for key in attr:
                if key not in _KNOWN_ATTRS and not _learn_name(key, "attribute"):
                    return None
        try:
            values = "".join(attr.values())  # fails for a value that is not a string
        except TypeError:
            return None
        if strict and _TEXT_SUSPECT.search(values):
            return None
    return Element(name, attr)


def _learn_name(name: object, kind: str) -> bool:
    """Whether name is a valid ``kind`` name that needs no conversion; remembered (in _KNOWN_*) if so."""
    if type(name) is not str or _name_problem(name, kind) is not None:  # pylint: disable=unidiomatic-typecheck
        return False
    known = _KNOWN_TAGS if kind == "tag" else _KNOWN_ATTRS
    if kind == "attribute" and "|" in name and _NS_SEP not in name:
        return False  # the legacy "ns|name" form, converted by the checked walk
    if len(known) >= _KNOWN_MAX:
        known.clear()
    known.add(name)
    return True


def _start_tag(element: Element, parent_ns: str | None, out: list[str]) -> None:
    """Write ``<name attrs`` and ``/>`` or ``>``, declaring a prefix per namespaced attribute."""
    start = "<" + element.name
    attrs = element.attr.items()
    if not attrs:  # most children (body, chat states...): one string, no loop
        out.append(start + (">" if element.children else "/>"))
        return
    out.append(start)
    nsid = 0
    for key, value in attrs:
        if _NS_SEP in key:
            ns, local = key.split(_NS_SEP, 1)
            nsid += 1
            out.append(f" xmlns:ns{nsid}='{_escape_attr(ns)}' ns{nsid}:{local}='{_escape_attr(value)}'")
        elif not (key == "xmlns" and value == parent_ns):
            out.append(f" {key}='{_escape_attr(value)}'")
    out.append(">" if element.children else "/>")


def _escape_text(text: str) -> str:
    """Text content as written: util.stanza's five entities, and CR as ``&#13;`` (``_TEXT_ESCAPE``)."""
    try:
        if not _TEXT_SPECIAL.search(text):
            return text
    except TypeError:  # not a string: fail as before
        return text.translate(_TEXT_ESCAPE)
    # "&" first, as the others bring one in; several str.replace beat str.translate's per-character lookup.
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("'", "&apos;").replace('"', "&quot;").replace("\r", "&#13;")


def _escape_attr(value: str) -> str:
    """An attribute value as written: util.stanza's five entities, and TAB, LF, CR as references (``_ATTR_ESCAPE``)."""
    try:
        if not _ATTR_SPECIAL.search(value):
            return value
    except TypeError:  # not a string: fail as before
        return value.translate(_ATTR_ESCAPE)
    value = value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("'", "&apos;")
    return value.replace('"', "&quot;").replace("\t", "&#9;").replace("\n", "&#10;").replace("\r", "&#13;")


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
    problem = _name_problem(value, kind)
    if problem:
        raise StanzaError(f"invalid {kind} name {value!r} at {where}: {problem}", source)


def _name_problem(value: str, kind: str) -> str | None:
    """What check_name refuses in the string ``value`` as a ``kind`` ("tag" or "attribute") name, if anything."""
    if not value:
        return "empty string"
    if _BAD_NAME_CHARS.search(value):
        return "contains invalid characters"
    if (_CONTROL_ATTR_NAME if kind == "attribute" else _CONTROL).search(value):
        return "contains control characters"
    if not _valid_utf8(value):
        return "contains invalid UTF-8"
    return None


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


class _Refused(Exception):
    """Raised by a handler for what util/xml.lua aborts on; ``parse`` makes it a StanzaError."""


def _refuse(what: str) -> Callable[..., None]:
    def handler(*_args: object) -> None:
        raise _Refused(what)

    return handler


# Made once rather than per parse: they need no state, as parse adds the source.
_REFUSALS = {
    # Prosody aborts on these (the DOCTYPE one is what stops entity bombs and external entities).
    "StartDoctypeDeclHandler": _refuse("a DOCTYPE declaration"),
    "EntityDeclHandler": _refuse("an entity declaration"),
    "ExternalEntityRefHandler": _refuse("an external entity"),
    "CommentHandler": _refuse("a comment"),
    "ProcessingInstructionHandler": _refuse("a processing instruction"),
}


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
        # Expat hands text over in pieces (at each line end and reference); pyexpat joins them
        # (up to buffer_size) before calling us, which saves most of the handler calls.
        parser.buffer_text = True
        parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
        parser.StartElementHandler = self._start
        parser.EndElementHandler = self._end
        parser.CharacterDataHandler = self._chardata
        parser.XmlDeclHandler = self._xml_decl
        for handler, refusal in _REFUSALS.items():
            setattr(parser, handler, refusal)
        try:
            parser.Parse(data, True)
        except expat.ExpatError as e:
            raise StanzaError(f"not well-formed XML: {_explain(e, text)}", self.source) from None
        except _Refused as e:
            raise StanzaError(f"XML with {e} is not accepted (Prosody's parser refuses it)", self.source) from None
        except RecursionError:  # not expected (handlers do not recurse), but never let it escape
            raise StanzaError("XML nested too deeply", self.source) from None
        if self.root is None:  # expat reports "no element found" first; kept for safety
            raise StanzaError("no element found", self.source)
        return self.root

    def _xml_decl(self, version: str | None, encoding: str | None, standalone: int) -> None:
        if encoding is not None and encoding.upper() not in _EXPAT_ENCODINGS:
            raise StanzaError(f"unknown encoding {encoding!r} in the XML declaration", self.source)

    def _flush_text(self) -> None:
        # LuaExpat merges character data between two tags into one string, as does Prosody.
        # Text is only gathered inside the root, so there is an element to take it.
        self.stack[-1].children.append("".join(self.chardata))
        self.chardata = []

    def _start(self, tagname: str, attributes: list[str]) -> None:
        stack = self.stack
        if len(stack) >= MAX_DEPTH:
            raise StanzaError(f"XML nested deeper than {MAX_DEPTH} elements", self.source)
        if self.chardata:
            self._flush_text()
        ns, sep, local = tagname.partition(_NS_SEP)
        attr: dict[str, str] = {}
        if sep:
            name = local
            attr["xmlns"] = ns
        else:
            name = ns
        pairs = iter(attributes)
        for key, value in zip(pairs, pairs):  # ordered_attributes: name, value, name, value...
            if _NS_SEP in key:
                key = self._attribute_key(key)
            attr[key] = value
        element = Element(name, attr)
        if stack:
            stack[-1].children.append(element)
        else:
            self.root = element
        stack.append(element)

    def _attribute_key(self, key: str) -> str:
        """Prosody's key for the namespaced attribute expat names ``"<uri>\\x01<local>"``."""
        ns, _sep, local = key.partition(_NS_SEP)
        if ns == XML_NS:
            return "xml:" + local
        if _BAD_NAME_CHARS.search(ns):
            # util.stanza checks "<uri>\x01<local>" as a name, so Prosody's parser raises here.
            raise StanzaError(
                f"namespace {ns!r} of attribute {local!r} holds a space or one of <>&'\", which Prosody refuses",
                self.source,
            )
        return key

    def _end(self, _tagname: str) -> None:
        if self.chardata:
            self._flush_text()
        self.stack.pop()

    def _chardata(self, data: str) -> None:
        if self.stack:
            self.chardata.append(data)


def xml_text_problem(text: str) -> str | None:
    """Why ``text`` cannot be in an XML document, literally or escaped ("holds the byte 0xFF,
    which is not valid UTF-8"), or None: its first character outside XML 1.0's Char production
    (control characters but TAB, LF and CR; U+FFFE and U+FFFF; bytes that are not UTF-8)."""
    if text.isprintable():  # no control character, surrogate nor U+FFFE/U+FFFF: twice as quick as the pattern
        return None
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
