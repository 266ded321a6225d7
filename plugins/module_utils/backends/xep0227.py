# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""XEP-0227 files as Prosody 0.12's ``mod_storage_xep0227`` keeps them (store type ``xep0227``).

Layout: one file per user, ``<path>/<user>@<host>.xml`` -- the JID itself, with no encoding (unlike
util.datamanager), holding ``<server-data xmlns='urn:xmpp:pie:0'><host jid=..><user name=..>``. The
stores Prosody maps onto the ``<user>`` element, and nothing else:

* ``accounts`` (keyval): ``<scram-credentials xmlns='urn:xmpp:pie:0#scram' mechanism='SCRAM-SHA-1'>``
  (server-key, stored-key and salt in base64, the keys hex in the store), else a ``password``
  attribute, other properties as attributes in ``http://prosody.im/protocol/extended-xep0227``.
  The mechanism name comes from the ``password_hash`` param (Prosody's option; default SHA-1).
* ``roster`` (keyval): ``<query xmlns='jabber:iq:roster' version=..>`` with ``<item>``/``<group>``,
  pending subscriptions as ``<presence type='subscribe' from=..>`` siblings of the query.
* ``vcard`` (keyval): the ``<vCard xmlns='vcard-temp'>`` element (its preserialized table).
* ``private`` (keyval): children of ``<query xmlns='jabber:iq:private'>``, keyed ``name:xmlns``.
* ``pep`` (keyval): node configuration, affiliations and subscriptions under
  ``<pubsub xmlns='http://jabber.org/protocol/pubsub#owner'>`` (config as a submitted
  pubsub#node_config data form, read and written with mod_pubsub's form layout).
* ``pep_<node>`` (archive): ``<pubsub xmlns='http://jabber.org/protocol/pubsub'><items node=..>``,
  one ``<item id=key>`` per item holding the stored stanza; read back with time 0 and the user's
  JID as peer, as Prosody reads them.
* ``archive`` (archive, MAM): ``<archive xmlns='urn:xmpp:pie:0#mam'>`` of ``<result
  xmlns='urn:xmpp:mam:2' id=key><forwarded><delay stamp=..><message xmlns='jabber:client'>``; the
  peer is derived from the message's to/from on reading, as Prosody derives it.

Any other store (offline, blocklist, muc_log, ...) raises Xep0227Error, as Prosody's driver answers
``unsupported-datastore``. Host-level data (user None) has no place in these files: reading it
gives nothing, writing anything but an empty value raises Xep0227Error (Prosody would write
``<host>.xml``, which nothing lists or migrates, and fails outright on host-level archives).

Deliberate differences from Prosody, each to keep data it would lose or misread:

* Writing a store creates the user's file when it is missing (Prosody only does for accounts and
  silently drops the rest); setting accounts again replaces the credentials (Prosody appends a
  second ``<scram-credentials>`` and keeps reading the first); removing accounts removes only the
  account data (Prosody deletes the whole file); a file left with nothing in it is removed.
* Pending subscriptions are written with ``xmlns='jabber:client'`` (the form Prosody reads; its
  own writer leaves the namespace out and then never reads them back), and are read in either
  form, also from a roster without items.
* PEP subscriptions are written with ``subscription='subscribed'`` (the attribute Prosody reads;
  its writer spells it ``subscribed``). Subscription options cannot be held (Prosody's code for
  them refers to a form that does not exist and raises) and raise Xep0227Error.
* Archive writes replace an item of the same key (Prosody appends a duplicate).
* A malformed file raises DecodeError naming it (Prosody logs and treats it as absent).
* An archive item whose key or stanza holds what XML cannot carry (a control character, bytes
  that are not UTF-8) is named by ``archive_unstorable`` and not written (Prosody writes it raw
  and the file is then unreadable); the engine writes the user's other items.
* JIDs in rosters and PEP affiliations are written and read as given, without Prosody's
  stringprep (data from Prosody is normalized already).
* Accounts read as ``{}`` for a file without account data (Prosody's answer) still count as no
  value for ``keyval_users`` and ``stores``.

Writes are atomic (fsutil.atomic_write), files get mode 0640 or the mode of an existing data
file (never bits for others: accounts hold password hashes). What a file cannot carry (PEP config
keys outside the form, archive peers that the message's to/from do not give) is reported in
``warnings``.
"""

from __future__ import annotations

import base64
import math
import os
import re
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Callable

from .. import fsutil
from ..errors import DecodeError, EncodeError, ProsodyMigrateError
from ..luadata import BoolKey
from ..stanza import Element, xml_text_problem
from .base import ArchiveItem, Backend
from .internal import format_stamp, parse_stamp

NS_PIE = "urn:xmpp:pie:0"
NS_SCRAM = "urn:xmpp:pie:0#scram"
NS_PIE_MAM = "urn:xmpp:pie:0#mam"
NS_EXTENDED = "http://prosody.im/protocol/extended-xep0227"
NS_ROSTER = "jabber:iq:roster"
NS_PRIVATE = "jabber:iq:private"
NS_VCARD = "vcard-temp"
NS_CLIENT = "jabber:client"
NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_PUBSUB_OWNER = "http://jabber.org/protocol/pubsub#owner"
NS_DATA = "jabber:x:data"
NS_MAM = "urn:xmpp:mam:2"
NS_FORWARD = "urn:xmpp:forward:0"
NS_DELAY = "urn:xmpp:delay"

EXT = NS_EXTENDED + "\x01"
XML = b".xml"
SCRAM_PROPS = ("server_key", "stored_key", "iteration_count", "salt")
KEYVAL_STORES = ("accounts", "roster", "vcard", "private", "pep")
PEP_PREFIX = "pep_"
CACHE_SIZE = 64

# mod_pubsub's node_config_form (pubsub.lib.lua): (name, var, type, default value in a submit form).
NODE_CONFIG_FORM: tuple[tuple[str | None, str, str, Any], ...] = (
    (None, "FORM_TYPE", "hidden", "http://jabber.org/protocol/pubsub#node_config"),
    ("title", "pubsub#title", "text-single", None),
    ("description", "pubsub#description", "text-single", None),
    ("payload_type", "pubsub#type", "text-single", None),
    ("max_items", "pubsub#max_items", "text-single", None),  # datatype pubsub:integer-or-max, min 1
    ("persist_items", "pubsub#persist_items", "boolean", None),
    ("access_model", "pubsub#access_model", "list-single", None),
    ("publish_model", "pubsub#publish_model", "list-single", None),
    ("send_last_published_item", "pubsub#send_last_published_item", "list-single", None),
    ("notify_items", "pubsub#deliver_notifications", "boolean", True),
    ("include_payload", "pubsub#deliver_payloads", "boolean", True),
    ("notification_type", "pubsub#notification_type", "list-single", None),
    ("notify_delete", "pubsub#notify_delete", "boolean", True),
    ("notify_retract", "pubsub#notify_retract", "boolean", True),
)
FORM_NAMES = frozenset(name for name, *_rest in NODE_CONFIG_FORM if name)
BOOLEANS = {"1": True, "true": True, "0": False, "false": False}

_LUA_SPACE = " \f\n\r\t\v"
_DEC_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?", re.ASCII)
_HEX_NUMBER = re.compile(r"([+-]?)0[xX]([0-9a-fA-F]*)(?:\.([0-9a-fA-F]*))?(?:[pP]([+-]?[0-9]+))?", re.ASCII)
_HEX_PAIR = re.compile(rb"[^0-9a-f]*([0-9a-f]{2})[^0-9a-f]*")
_ATTR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9._\-]*")
_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_SKIP = frozenset(b"\n\r\t \f\b")


class Xep0227Error(ProsodyMigrateError):
    """A store, name or directory that XEP-0227 files cannot serve."""


# Lua's number <-> string conversions ---------------------------------------------------------
def lua_tostring(value: int | float) -> str:
    """Lua 5.4's tostring of a number (``%.14g``, floats keep a ``.0``)."""
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "nan" if math.copysign(1.0, value) > 0 else "-nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    text = f"{value:.14g}"
    return text if re.search(r"[.eEn]", text) else text + ".0"


def lua_tonumber(text: str) -> int | float | None:
    """Lua 5.4's tonumber of a string: decimal or hex, integer or float, surrounding space allowed."""
    text = text.strip(_LUA_SPACE)
    hexm = _HEX_NUMBER.fullmatch(text)
    if hexm:
        sign, whole, frac, exp = hexm.groups()
        if not whole and not frac:
            return None
        if frac is None and exp is None:
            value = int(whole, 16) % 2**64  # Lua wraps hex integers around
            value = value - 2**64 if value >= 2**63 else value
            return -value if sign == "-" else value
        mantissa = int((whole or "") + (frac or "") or "0", 16)
        number = math.ldexp(float(mantissa), int(exp or 0) - 4 * len(frac or ""))
        return -number if sign == "-" else number
    decm = _DEC_NUMBER.fullmatch(text)
    if not decm:
        return None
    if "." not in text and decm[2] is None:
        value = int(text)
        if -(2**63) <= value < 2**63:
            return value
    return float(text)


# JIDs, hex and base64 as Prosody's helpers treat them ---------------------------------------
def jid_bare(jid: str | None) -> str | None:
    """util.jid.bare: ``node@host`` or ``host`` of a JID, None when it does not split."""
    if jid is None:
        return None
    node_m = re.match(r"([^@/]+)@", jid)
    node, pos = (node_m[1], node_m.end()) if node_m else (None, 0)
    host_m = re.compile(r"[^@/]+").match(jid, pos)
    if host_m is None:
        return None
    end = host_m.end()
    if not re.fullmatch(r"/.+", jid[end:], re.DOTALL) and len(jid) > end:
        return None
    return f"{node}@{host_m[0]}" if node is not None else host_m[0]


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def hex_decode(text: str) -> bytes:
    """util.hex.decode: lenient, as its gsub is (non-hex around each pair dropped)."""
    return _HEX_PAIR.sub(lambda m: bytes([int(m[1], 16)]), _bytes(text).lower())


def b64_decode(text: str) -> bytes | None:
    """util.encodings.base64.decode: whitespace skipped, ``=`` ends a group, NUL ends the input."""
    out = bytearray()
    group: list[int] = []
    for byte in _bytes(text):
        if byte == 0:
            break
        if byte in _B64_SKIP:
            continue
        if byte == ord("="):
            out += _b64_group(group)
            group = []
            continue
        index = _B64_ALPHABET.find(bytes([byte]))
        if index < 0:
            return None
        group.append(index)
        if len(group) == 4:
            out += _b64_group(group)
            group = []
    return bytes(out)


def _b64_group(group: list[int]) -> bytes:
    if len(group) < 2:
        return b""
    bits = 0
    for index in group + [0] * (4 - len(group)):
        bits = bits << 6 | index
    return bits.to_bytes(3, "big")[: len(group) - 1]


# stanza helpers with util.stanza's matching rules ---------------------------------------------
def _ns_match(parent: Element, child: Element, xmlns: str | None) -> bool:
    if xmlns is None:
        return child.attr.get("xmlns") == parent.attr.get("xmlns")
    return child.attr.get("xmlns") == xmlns


def childtags(parent: Element, name: str | None = None, xmlns: str | None = None) -> Iterator[Element]:
    """util.stanza's childtags: element children by name and namespace (default: the parent's)."""
    for child in parent.children:
        if isinstance(child, Element) and (name is None or child.name == name) and _ns_match(parent, child, xmlns):
            yield child


def get_child(parent: Element, name: str | None, xmlns: str | None = None) -> Element | None:
    return next(childtags(parent, name, xmlns), None)


def get_text(element: Element) -> str | None:
    """util.stanza's get_text: the text of an element without child elements, else None."""
    if any(isinstance(c, Element) for c in element.children):
        return None
    return "".join(element.children)  # type: ignore[arg-type]


def get_child_text(parent: Element, name: str, xmlns: str | None = None) -> str | None:
    child = get_child(parent, name, xmlns)
    return None if child is None else get_text(child)


def remove_children(parent: Element, keep: Callable[[Element], bool]) -> None:
    parent.children = [c for c in parent.children if not isinstance(c, Element) or keep(c)]


def text_tag(name: str, text: str) -> Element:
    """``:text_tag`` -- an empty text adds no child, as util.stanza's text() does."""
    return Element(name, {}, [text] if text else [])


def _lua_truthy(value: Any) -> bool:
    return value is not None and value is not False


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _format_d(value: Any, what: str) -> str:
    """Lua's ``("%d"):format(value)``, which needs an integral number."""
    if isinstance(value, float) and value.is_integer() and -(2.0**63) <= value < 2.0**63:
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise EncodeError(f"{what} {value!r} is not an integer")
    return str(value)


class Xep0227Backend(Backend):
    """Prosody's ``xep0227`` storage: one XEP-0227 XML file per user."""

    def __init__(self, params: Mapping[str, Any]) -> None:
        super().__init__(params)
        path = self.params.get("path")
        if not path or not isinstance(path, (str, bytes)):
            raise Xep0227Error("the xep0227 store needs 'path', the directory of the <user>@<host>.xml files")
        hash_name = self.params.get("password_hash", "SHA-1")
        if not isinstance(hash_name, str) or not hash_name:
            raise Xep0227Error(f"'password_hash' must be a hash name such as SHA-1, not {hash_name!r}")
        self.mechanism = "SCRAM-" + hash_name
        self.path = os.fsdecode(path)
        self.root = os.fsencode(path)
        self._cache: OrderedDict[bytes, tuple[tuple[int, int, int], Element]] = OrderedDict()
        self._warned: set[str] = set()
        self._file_owner: fsutil.Owner | None = None
        self._dir_ready = False

    # names and files ------------------------------------------------------------------------
    def _warn(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            self.warnings.append(message)

    def _file(self, host: str, user: str) -> bytes:
        """``<path>/<user>@<host>.xml``; names that would not come back from a listing are refused."""
        for what, name in (("host", host), ("user", user)):
            if not isinstance(name, str) or not name:
                raise Xep0227Error(f"an empty or non-string {what} name ({name!r}) cannot name a XEP-0227 file")
            if "/" in name or "\x00" in name:
                raise Xep0227Error(f"{what} name {name!r} holds '/' or NUL, which cannot be in a file name")
        if "@" in user:
            raise Xep0227Error(f"user name {user!r} holds '@': Prosody would read its file as another user's")
        return os.path.join(self.root, _bytes(f"{user}@{host}") + XML)

    def _where(self, path: bytes, host: str, store: str, user: str | None) -> str:
        return f"{os.fsdecode(path)} (host {host!r}, store {store!r}, user {user!r})"

    def _check_store(self, host: str, store: str, user: str | None, kind: str) -> None:
        ok = store in KEYVAL_STORES if kind == "keyval" else store == "archive" or _pep_node(store) is not None
        if not ok:
            raise Xep0227Error(
                f"store {store!r} ({kind}) of host {host!r}, user {user!r} cannot be held in XEP-0227 files: "
                "Prosody's mod_storage_xep0227 maps only the keyval stores accounts, roster, vcard, private, "
                "pep and the archive stores archive and pep_<node>"
            )

    def _entries(self) -> list[tuple[str, str, bytes]]:
        """(user, host, path) of every user file in the directory."""
        try:
            with os.scandir(self.root) as it:
                names = [(e.name, e.path) for e in it if e.name.endswith(XML) and not fsutil.is_temp_name(e.name)]
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise Xep0227Error(f"cannot list {self.path}: {exc.strerror}") from None
        found = []
        for raw, path in names:
            user, at, host = _text(raw[: -len(XML)]).partition("@")
            if not at:
                continue  # <host>.xml: where Prosody would put host-level data; never a user's
            if not user or not host:
                self._warn(f"{os.fsdecode(path)}: no user or host in the file name; skipped (Prosody lists no user)")
                continue
            if os.path.isfile(path):
                found.append((user, host, path))
        return sorted(found)

    # reading --------------------------------------------------------------------------------
    def _load(self, path: bytes) -> Element | None:
        """The ``<user>`` element of a file, None if there is no file."""
        root = self._load_root(path)
        return None if root is None else _user_element(root, os.fsdecode(path))

    def _load_root(self, path: bytes) -> Element | None:
        """A file's parsed tree (parsed once while the file is unchanged), None if absent."""
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise Xep0227Error(f"cannot read {os.fsdecode(path)}: {exc.strerror}") from None
        sig = (st.st_mtime_ns, st.st_size, st.st_ino)
        cached = self._cache.get(path)
        if cached and cached[0] == sig:
            self._cache.move_to_end(path)
            return cached[1]
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise Xep0227Error(f"cannot read {os.fsdecode(path)}: {exc.strerror}") from None
        source = os.fsdecode(path)
        root = Element.from_xml(_text(data), source)
        _user_element(root, source)
        self._cache[path] = (sig, root)
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return root

    def keyval_users(self, host: str, store: str) -> Iterator[str]:
        self._check_store(host, store, None, "keyval")
        users = []
        for user, file_host, path in self._entries():
            if file_host == host and _present(self._read_keyval(path, host, store, user)):
                users.append(user)
        return iter(users)

    def keyval_get(self, host: str, store: str, user: str | None) -> Any:
        self._check_store(host, store, user, "keyval")
        if user is None:
            return None
        return self._read_keyval(self._file(host, user), host, store, user)

    def _read_keyval(self, path: bytes, host: str, store: str, user: str) -> Any:
        user_el = self._load(path)
        if user_el is None:
            return None
        where = self._where(path, host, store, user)
        reader = getattr(self, f"_get_{store}")
        return reader(user_el, where)

    def _get_accounts(self, user_el: Element, where: str) -> dict[str, Any]:
        scram = None
        for el in childtags(user_el, "scram-credentials", NS_SCRAM):
            if el.attr.get("mechanism") == self.mechanism:
                scram = el
                break
            self._warn(f"{where}: <scram-credentials> for {el.attr.get('mechanism')!r} ignored (not {self.mechanism})")
        if scram is not None:
            return self._read_scram(scram, where)
        if "password" in user_el.attr:
            return {"password": user_el.attr["password"]}
        return {k[len(EXT) :]: v for k, v in user_el.attr.items() if k.startswith(EXT)}

    def _read_scram(self, scram: Element, where: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        count = get_child_text(scram, "iter-count")
        number = None if count is None else lua_tonumber(count)
        if number is not None:
            out["iteration_count"] = number
        for key, tag in (("server_key", "server-key"), ("stored_key", "stored-key"), ("salt", "salt")):
            text = get_child_text(scram, tag)
            raw = None if text is None else b64_decode(text)
            if raw is None:
                raise DecodeError(f"<scram-credentials> has no valid base64 <{tag}>", where)
            out[key] = _text(raw) if key == "salt" else raw.hex()
        return out

    def _get_roster(self, user_el: Element, where: str) -> dict[Any, Any] | None:
        query = get_child(user_el, "query", NS_ROSTER)
        if query is None:
            return None
        meta: dict[str, Any] = {"pending": {}}
        if "version" in query.attr:
            meta["version"] = query.attr["version"]
        roster: dict[Any, Any] = {BoolKey(False): meta}
        for item in childtags(query, "item"):
            jid = item.attr.get("jid")
            if jid is None:
                raise DecodeError("a roster <item> has no jid", where)
            entry: dict[str, Any] = {k: item.attr[k] for k in ("jid", "subscription", "ask", "name") if k in item.attr}
            groups: dict[str, bool] = {}
            for group in childtags(item, "group"):
                name = get_text(group)
                if name is None:
                    raise DecodeError(f"roster group of {jid!r} holds elements, not text", where)
                groups[name] = True
            entry["groups"] = groups
            roster[jid] = entry
        for presence in (c for c in user_el.children if isinstance(c, Element) and c.name == "presence"):
            ns = presence.attr.get("xmlns")
            # jabber:client is what Prosody reads; pie:0 subscribe is what its writer leaves.
            if ns == NS_CLIENT or (ns == NS_PIE and presence.attr.get("type") == "subscribe"):
                sender = presence.attr.get("from")
                if sender is None:
                    raise DecodeError("a pending subscription <presence> has no from", where)
                meta["pending"][sender] = True
        return roster

    def _get_vcard(self, user_el: Element, where: str) -> dict[Any, Any] | None:
        vcard = get_child(user_el, "vCard", NS_VCARD)
        return None if vcard is None else vcard.preserialize()

    def _get_private(self, user_el: Element, where: str) -> dict[str, Any] | None:
        query = get_child(user_el, "query", NS_PRIVATE)
        if query is None:
            return None
        out = {}
        for tag in (c for c in query.children if isinstance(c, Element)):
            ns = tag.attr.get("xmlns")
            if ns is None:
                raise DecodeError(f"private element <{tag.name}> has no namespace", where)
            out[f"{tag.name}:{ns}"] = tag.preserialize()
        return out

    def _get_pep(self, user_el: Element, where: str) -> dict[str, Any] | None:
        owner = get_child(user_el, "pubsub", NS_PUBSUB_OWNER)
        if owner is None:
            pubsub = get_child(user_el, "pubsub", NS_PUBSUB)
            if pubsub is None:
                return None
            # Items without configuration: mod_pep's COMPAT form for a node that merely exists.
            return {items.attr.get("node"): True for items in childtags(pubsub, "items") if "node" in items.attr}
        nodes: dict[str, Any] = {}
        for node_el in (c for c in owner.children if isinstance(c, Element)):
            name = node_el.attr.get("node")
            if name is None:
                raise DecodeError(f"pubsub <{node_el.name}> has no node", where)
            node = nodes.setdefault(name, {"name": name, "config": {}, "affiliations": {}, "subscribers": {}})
            if node_el.name == "configure":
                form = get_child(node_el, "x", NS_DATA)
                if form is not None:
                    node["config"] = read_node_config(form)
            elif node_el.name == "affiliations":
                for aff in childtags(node_el, "affiliation"):
                    if "jid" in aff.attr and "affiliation" in aff.attr:
                        node["affiliations"][aff.attr["jid"]] = aff.attr["affiliation"]
            elif node_el.name == "subscriptions":
                for sub in childtags(node_el, "subscription"):
                    if "jid" in sub.attr and sub.attr.get("subscription") == "subscribed":
                        options = get_child(sub, "options")
                        if options is not None and get_child(options, "x", NS_DATA) is not None:
                            raise DecodeError("PEP subscription options cannot be read (nor can Prosody)", where)
                        node["subscribers"][sub.attr["jid"]] = True
            else:
                self._warn(f"{where}: unknown pubsub element <{node_el.name}> ignored, as Prosody ignores it")
        return nodes

    # writing --------------------------------------------------------------------------------
    def keyval_set(self, host: str, store: str, user: str | None, value: Any, absent: bool = False) -> None:
        self._check_store(host, store, user, "keyval")
        empty = value is None or value is False or (isinstance(value, dict) and not value)
        if user is None:
            if not empty:
                raise Xep0227Error(
                    f"host-level data of store {store!r}, host {host!r} cannot be held in XEP-0227 files "
                    "(they hold per-user data only)"
                )
            return
        path = self._file(host, user)
        where = self._where(path, host, store, user)
        writer = getattr(self, f"_set_{store}")
        self._modify(path, host, user, lambda user_el: writer(user_el, None if empty else value, host, user, where))

    def _modify(self, path: bytes, host: str, user: str, change: Callable[[Element], None]) -> None:
        """Read a user's file (or start one), apply a change, write it back (or remove it if empty)."""
        existing = self._load_root(path)
        # The cached tree is about to change: it must not outlive a change that fails half-way.
        self._cache.pop(path, None)
        if existing is None:
            root = Element("server-data", {"xmlns": NS_PIE})
            user_el = root.tag("host", {"jid": host}).tag("user", {"name": user})
        else:
            root = existing
            user_el = _user_element(root, os.fsdecode(path))
        change(user_el)
        if not user_el.children and set(user_el.attr) <= {"name", "xmlns"}:
            if existing is not None:
                self._remove(path)
            return
        text = root.to_xml()
        # What Prosody's parser cannot read back must not replace a readable file.
        try:
            Element.from_xml(text, os.fsdecode(path))
        except DecodeError as exc:
            raise EncodeError(f"the data cannot be written as XML that Prosody can read back: {exc}") from None
        self._write(path, _bytes(text))

    def _set_accounts(self, user_el: Element, data: Any, host: str, user: str, where: str) -> None:
        remove_children(user_el, lambda el: not (el.name == "scram-credentials" and el.attr.get("xmlns") == NS_SCRAM))
        for key in [k for k in user_el.attr if k == "password" or k.startswith(EXT)]:
            del user_el.attr[key]
        if data is None:
            return
        if not isinstance(data, dict):
            raise EncodeError(f"{where}: an account must be a table, not {type(data).__name__}")
        rest = dict(data)
        if all(k in data for k in SCRAM_PROPS):
            scram = Element("scram-credentials", {"xmlns": NS_SCRAM, "mechanism": self.mechanism})
            for key, tag in (("server_key", "server-key"), ("stored_key", "stored-key")):
                if not isinstance(data[key], str):
                    raise EncodeError(f"{where}: {key} is not a hex string")
                scram.children.append(text_tag(tag, base64.b64encode(hex_decode(data[key])).decode()))
            scram.children.append(
                text_tag("iter-count", _format_d(data["iteration_count"], f"{where}: iteration_count"))
            )
            if not isinstance(data["salt"], str):
                raise EncodeError(f"{where}: salt is not a string")
            scram.children.append(text_tag("salt", base64.b64encode(_bytes(data["salt"])).decode()))
            user_el.children.append(scram)
            for key in SCRAM_PROPS:
                del rest[key]
        if "password" in rest:
            user_el.attr["password"] = _attr_value(rest.pop("password"), f"{where}: password")
        for key, value in rest.items():
            if not isinstance(key, str) or not _ATTR_NAME.fullmatch(key):
                raise EncodeError(f"{where}: account property {key!r} cannot be an XML attribute name")
            user_el.attr[EXT + key] = _attr_value(value, f"{where}: account property {key!r}")

    def _set_roster(self, user_el: Element, data: Any, host: str, user: str, where: str) -> None:
        def keep(el: Element) -> bool:
            if el.name == "query" and el.attr.get("xmlns") == NS_ROSTER:
                return False
            return not (
                el.name == "presence"
                and el.attr.get("type") == "subscribe"
                and el.attr.get("xmlns") in (NS_CLIENT, NS_PIE)
            )

        remove_children(user_el, keep)
        if data is None:
            return
        if not isinstance(data, dict):
            raise EncodeError(f"{where}: a roster must be a table")
        query = user_el.tag("query", {"xmlns": NS_ROSTER})
        self_jid = f"{user}@{host}"
        for contact, item in data.items():
            if isinstance(contact, BoolKey) and not contact.value:
                self._roster_meta(user_el, query, item, where)
                continue
            if not isinstance(contact, str):
                raise EncodeError(f"{where}: roster contact {contact!r} is not a JID string")
            if contact == self_jid:
                continue  # Prosody skips the self-contact too
            if not isinstance(item, dict):
                raise EncodeError(f"{where}: roster item {contact!r} is not a table")
            attr = {"jid": contact}
            for key in ("subscription", "ask", "name"):
                if item.get(key) is not None:
                    attr[key] = _attr_text(item[key], f"{where}: roster item {contact!r} {key}")
            item_el = query.tag("item", attr)
            groups = item.get("groups") or {}
            if not isinstance(groups, dict):
                raise EncodeError(f"{where}: groups of roster item {contact!r} are not a table")
            for group in groups:
                if not isinstance(group, str):
                    raise EncodeError(f"{where}: roster group {group!r} of {contact!r} is not a string")
                item_el.children.append(text_tag("group", group))

    @staticmethod
    def _roster_meta(user_el: Element, query: Element, meta: Any, where: str) -> None:
        if not isinstance(meta, dict):
            raise EncodeError(f"{where}: the roster's metadata entry (key false) is not a table")
        if meta.get("version") is not None:
            query.attr["version"] = _attr_value(meta["version"], f"{where}: roster version")
        pending = meta.get("pending") or {}
        if not isinstance(pending, dict):
            raise EncodeError(f"{where}: pending subscriptions are not a table")
        for sender in pending:
            if not isinstance(sender, str):
                raise EncodeError(f"{where}: pending subscription {sender!r} is not a JID string")
            user_el.tag("presence", {"xmlns": NS_CLIENT, "from": sender, "type": "subscribe"})

    def _set_vcard(self, user_el: Element, data: Any, host: str, user: str, where: str) -> None:
        remove_children(user_el, lambda el: not (el.name == "vCard" and el.attr.get("xmlns") == NS_VCARD))
        if not isinstance(data, dict) or data.get("attr") is None:
            return  # Prosody's test: no table with attr means no vCard
        vcard = Element.deserialize(data, where)
        if vcard.name != "vCard" or vcard.attr.get("xmlns") != NS_VCARD:
            raise EncodeError(f"{where}: a <{vcard.name}> in {vcard.attr.get('xmlns')!r} is not a vcard-temp vCard")
        user_el.children.append(vcard)

    def _set_private(self, user_el: Element, data: Any, host: str, user: str, where: str) -> None:
        remove_children(user_el, lambda el: not (el.name == "query" and el.attr.get("xmlns") == NS_PRIVATE))
        if data is None:
            return
        if not isinstance(data, dict):
            raise EncodeError(f"{where}: private storage must be a table")
        query = user_el.tag("query", {"xmlns": NS_PRIVATE})
        for key, value in data.items():
            query.children.append(Element.deserialize(value, f"{where} [{key!r}]"))

    def _set_pep(self, user_el: Element, data: Any, host: str, user: str, where: str) -> None:
        remove_children(user_el, lambda el: not (el.name == "pubsub" and el.attr.get("xmlns") == NS_PUBSUB_OWNER))
        if data is None:
            return
        if not isinstance(data, dict):
            raise EncodeError(f"{where}: PEP node data must be a table")
        owner = user_el.tag("pubsub", {"xmlns": NS_PUBSUB_OWNER})
        for name, node in data.items():
            if not isinstance(name, str):
                raise EncodeError(f"{where}: PEP node name {name!r} is not a string")
            if node is True:
                node = {"config": {}}
            if not isinstance(node, dict):
                raise EncodeError(f"{where}: PEP node {name!r} is not a table")
            config = node.get("config")
            if not isinstance(config, dict):
                raise EncodeError(f"{where}: PEP node {name!r} has no config table")
            for key in config:
                if key not in FORM_NAMES:
                    self._warn(f"{where}: PEP node {name!r} config {key!r} has no field in the form; not kept")
            owner.tag("configure", {"node": name}).children.append(node_config_form(config, f"{where}: node {name!r}"))
            self._pep_people(owner, name, node, where)

    @staticmethod
    def _pep_people(owner: Element, name: str, node: dict[Any, Any], where: str) -> None:
        affiliations = node.get("affiliations") or {}
        if affiliations:
            aff_el = owner.tag("affiliations", {"node": name})
            for jid, value in affiliations.items():
                aff_el.tag(
                    "affiliation",
                    {
                        "jid": _attr_text(jid, f"{where}: affiliation JID"),
                        "affiliation": _attr_text(value, f"{where}: affiliation"),
                    },
                )
        subscribers = node.get("subscribers") or {}
        if subscribers:
            subs_el = owner.tag("subscriptions", {"node": name})
            for jid, options in subscribers.items():
                if options is not True:
                    raise Xep0227Error(
                        f"{where}: PEP node {name!r} subscriber {jid!r} has subscription options, which Prosody's "
                        "XEP-0227 module cannot hold"
                    )
                subs_el.tag(
                    "subscription", {"jid": _attr_text(jid, f"{where}: subscriber JID"), "subscription": "subscribed"}
                )

    def _remove(self, path: bytes) -> None:
        try:
            fsutil.remove_file(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise Xep0227Error(f"cannot remove {os.fsdecode(path)}: {exc.strerror}") from None

    def _write(self, path: bytes, data: bytes) -> None:
        try:
            if not self._dir_ready:
                if not os.path.isdir(self.root):
                    os.makedirs(self.root, fsutil.DEFAULT_DIR_MODE, exist_ok=True)
                self._file_owner = self._scan_template()
                self._dir_ready = True
            try:
                owner = fsutil.owner_like(os.stat(path), fsutil.FILE_MODE_MASK)
            except FileNotFoundError:
                owner = self._file_owner
                if owner is None:
                    st = os.stat(self.root)
                    owner = fsutil.Owner(fsutil.DEFAULT_FILE_MODE, st.st_uid, st.st_gid)
            fsutil.atomic_write(path, data, owner)
        except OSError as exc:
            raise Xep0227Error(f"cannot write {os.fsdecode(path)}: {exc.strerror or exc}") from None

    def _scan_template(self) -> fsutil.Owner | None:
        """The owner of an existing user file (new files get the same), removing leftovers of a killed run."""
        owner = None
        with os.scandir(self.root) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if fsutil.is_temp_name(entry.name):
                    if fsutil.is_stale_temp(entry.name):
                        fsutil.remove_file(entry.path)
                elif owner is None and entry.name.endswith(XML) and entry.is_file():
                    owner = fsutil.owner_like(entry.stat(), fsutil.FILE_MODE_MASK)
        return owner

    # archives -------------------------------------------------------------------------------
    def archive_users(self, host: str, store: str) -> Iterator[str]:
        self._check_store(host, store, None, "archive")
        users = []
        for user, file_host, path in self._entries():
            if file_host == host:
                user_el = self._load(path)
                if user_el is not None and next(self._item_elements(user_el, store), None) is not None:
                    users.append(user)
        return iter(users)

    def _item_elements(self, user_el: Element, store: str) -> Iterator[Element]:
        node = _pep_node(store)
        if node is None:
            archive = get_child(user_el, "archive", NS_PIE_MAM)
            return childtags(archive, "result", NS_MAM) if archive is not None else iter(())
        items = _pep_items(user_el, node)
        return childtags(items, "item") if items is not None else iter(())

    def archive_items(self, host: str, store: str, user: str | None) -> Iterator[ArchiveItem]:
        self._check_store(host, store, user, "archive")
        if user is None:
            return
        path = self._file(host, user)
        user_el = self._load(path)
        if user_el is None:
            return
        where = self._where(path, host, store, user)
        user_jid = f"{user}@{host}"
        decode = _decode_pep_item if _pep_node(store) is not None else _decode_mam_result
        for index, el in enumerate(self._item_elements(user_el, store), 1):
            yield decode(el, user_jid, f"{where} item {index}")

    def archive_unstorable(
        self, host: str, store: str, user: str | None, items: Iterable[ArchiveItem]
    ) -> dict[str, str]:
        """Items whose key or stanza holds what XML cannot carry (a control character, bytes that
        are not UTF-8): the file would be unreadable. Other problems still fail the whole write."""
        self._check_store(host, store, user, "archive")
        if user is None:
            return {}  # archive_write refuses host-level archives as a whole
        problems = {}
        for item in items:
            if isinstance(item.key, str) and isinstance(item.value, Element):
                problem = xml_text_problem(item.key)
                what = "key"
                if problem is None:
                    problem, what = xml_text_problem(item.value.to_xml()), "stanza"
                if problem:
                    where = self._where(self._file(host, user), host, store, user)
                    problems[item.key] = f"{where}: cannot store item {item.key!r} in XML: its {what} {problem}"
        return problems

    def archive_write(
        self, host: str, store: str, user: str | None, items: Iterable[ArchiveItem], absent: bool = False
    ) -> None:
        self._check_store(host, store, user, "archive")
        items = list(items)
        if not items:
            return
        if user is None:
            raise Xep0227Error(
                f"host-level archive {store!r} of host {host!r} cannot be held in XEP-0227 files "
                "(they hold per-user archives only)"
            )
        path = self._file(host, user)
        where = self._where(path, host, store, user)
        node = _pep_node(store)
        user_jid = f"{user}@{host}"
        if node is None:
            elements = [self._encode_mam(item, user_jid, where) for item in items]
        else:
            elements = [_encode_pep_item(item, user_jid, where, self._warn) for item in items]
        self._modify(path, host, user, lambda user_el: _append(user_el, node, elements))

    def _encode_mam(self, item: ArchiveItem, user_jid: str, where: str) -> Element:
        key, message = _check_item(item, where)
        if not _is_number(item.when):
            raise EncodeError(f"{where}: item {key!r} has a time {item.when!r} that is not a number")
        payload = _clone(message)
        payload.attr["xmlns"] = NS_CLIENT
        derived = _derive_with(payload, user_jid)
        if item.with_ is not None and item.with_ != derived:
            self._warn(
                f"{where}: the file keeps no archive peer; item {key!r} with {item.with_!r} reads back with {derived!r}"
            )
        result = Element("result", {"xmlns": NS_MAM, "id": key})
        forwarded = result.tag("forwarded", {"xmlns": NS_FORWARD})
        forwarded.tag("delay", {"xmlns": NS_DELAY, "stamp": format_stamp(item.when)})
        forwarded.children.append(payload)
        return result

    # discovery ------------------------------------------------------------------------------
    def check_source(self) -> None:
        if not os.path.isdir(self.root):
            raise Xep0227Error(f"directory {self.path!r} does not exist or is not a directory")

    def hosts(self) -> Iterator[str]:
        return iter(sorted({host for _user, host, _store in self._entries()}))

    def stores(self, host: str) -> Iterator[tuple[str, str]]:
        found: set[tuple[str, str]] = set()
        for user, file_host, path in self._entries():
            if file_host != host:
                continue
            user_el = self._load(path)
            if user_el is None:
                continue
            for store in KEYVAL_STORES:
                if _present(self._read_keyval(path, host, store, user)):
                    found.add((store, "keyval"))
            archive = get_child(user_el, "archive", NS_PIE_MAM)
            if archive is not None and next(childtags(archive, "result", NS_MAM), None) is not None:
                found.add(("archive", "archive"))
            pubsub = get_child(user_el, "pubsub", NS_PUBSUB)
            for items in childtags(pubsub, "items") if pubsub is not None else ():
                if items.attr.get("node") and next(childtags(items, "item"), None) is not None:
                    found.add((PEP_PREFIX + items.attr["node"], "archive"))
        return iter(sorted(found))


# module helpers ---------------------------------------------------------------------------------
def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, dict) and not value)


def _pep_node(store: str) -> str | None:
    if store.startswith(PEP_PREFIX) and len(store) > len(PEP_PREFIX):
        return store[len(PEP_PREFIX) :]
    return None


def _user_element(root: Element, source: str) -> Element:
    """``<server-data><host><user>``, each the first child element, as Prosody finds it."""
    host = next((c for c in root.children if isinstance(c, Element)), None)
    user = next((c for c in host.children if isinstance(c, Element)), None) if host is not None else None
    if root.name != "server-data" or host is None or host.name != "host" or user is None or user.name != "user":
        raise DecodeError("not a XEP-0227 user file: expected <server-data><host><user>", source)
    return user


def _clone(element: Element) -> Element:
    return Element.deserialize(element.preserialize(), "stanza", strict=False)


def _attr_text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise EncodeError(f"{what} {value!r} is not a string")
    return value


def _attr_value(value: Any, what: str) -> str:
    """A value Prosody assigns to an attribute directly: strings, numbers as Lua's tostring gives them."""
    if _is_number(value):
        return lua_tostring(value)
    return _attr_text(value, what)


def read_node_config(form: Element) -> dict[str, Any]:
    """mod_pubsub's node_config_form:data(form): typed values of the fields present."""
    data: dict[str, Any] = {}
    for name, var, type_, _default in NODE_CONFIG_FORM:
        field = next((f for f in childtags(form, "field") if f.attr.get("var") == var), None)
        if field is None or name is None:
            continue
        text = get_child_text(field, "value")
        value: Any = text
        if text is not None and type_ == "boolean":
            value = BOOLEANS.get(text)
        elif text is not None and name == "max_items" and text != "max":
            number = lua_tonumber(text)
            valid = number is not None and math.isfinite(number) and number % 1 == 0 and number >= 1
            value = number if valid else None
        if value is not None:
            data[name] = value
    return data


def node_config_form(config: Mapping[Any, Any], what: str) -> Element:
    """mod_pubsub's node_config_form:form(config, "submit")."""
    form = Element("x", {"xmlns": NS_DATA, "type": "submit"})
    for name, var, type_, default in NODE_CONFIG_FORM:
        field = form.tag("field", {"type": type_, "var": var})
        value = default
        if name is not None and config.get(name) is not None:
            value = config[name]
        if value is None:
            continue
        if _is_number(value):
            value = value != 0 if type_ == "boolean" else _format_d(value, f"{what} config {name!r}")
        if type_ == "boolean":
            field.children.append(text_tag("value", "1" if _lua_truthy(value) else "0"))
        else:
            field.children.append(text_tag("value", _attr_text(value, f"{what} config {name!r}")))
    return form


def _pep_items(user_el: Element, node: str) -> Element | None:
    pubsub = get_child(user_el, "pubsub", NS_PUBSUB)
    if pubsub is None:
        return None
    return next((i for i in childtags(pubsub, "items") if i.attr.get("node") == node), None)


def _check_item(item: ArchiveItem, where: str) -> tuple[str, Element]:
    if not isinstance(item.key, str):
        raise EncodeError(f"{where}: archive key {item.key!r} is not a string")
    if not isinstance(item.value, Element):
        raise EncodeError(f"{where}: item {item.key!r} is not a stanza; XEP-0227 files hold stanzas only")
    return item.key, item.value


def _encode_pep_item(item: ArchiveItem, user_jid: str, where: str, warn: Callable[[str], None]) -> Element:
    key, payload = _check_item(item, where)
    if item.when != 0 or (item.with_ is not None and item.with_ != user_jid):
        warn(f"{where}: the file keeps no time or peer for PEP items; they read back as 0 and {user_jid!r}")
    return Element("item", {"id": key}, [payload])


def _append(user_el: Element, node: str | None, elements: list[Element]) -> None:
    """Add items at the end of the archive or node, replacing items of the same key."""
    if node is None:
        parent = get_child(user_el, "archive", NS_PIE_MAM) or user_el.tag("archive", {"xmlns": NS_PIE_MAM})
        keyed = ("result", NS_MAM)
    else:
        pubsub = get_child(user_el, "pubsub", NS_PUBSUB) or user_el.tag("pubsub", {"xmlns": NS_PUBSUB})
        parent = _pep_items(user_el, node) or pubsub.tag("items", {"node": node})
        keyed = ("item", parent.attr.get("xmlns"))
    last = {el.attr["id"]: i for i, el in enumerate(elements)}
    elements = [el for i, el in enumerate(elements) if last[el.attr["id"]] == i]

    def keep(el: Element) -> bool:
        return not (el.name == keyed[0] and _ns_match(parent, el, keyed[1]) and el.attr.get("id") in last)

    remove_children(parent, keep)
    parent.children.extend(elements)


def _derive_with(message: Element, user_jid: str) -> str | None:
    """The peer Prosody derives: the bare 'from' when the bare 'to' is the user, else the bare 'to'."""
    to_bare, from_bare = jid_bare(message.attr.get("to")), jid_bare(message.attr.get("from"))
    return from_bare if to_bare == user_jid and from_bare is not None else to_bare


def _decode_mam_result(result: Element, user_jid: str, where: str) -> ArchiveItem:
    key = result.attr.get("id")
    if key is None:
        raise DecodeError("archive <result> has no id", where)
    forwarded = get_child(result, "forwarded", NS_FORWARD)
    message = get_child(forwarded, "message", NS_CLIENT) if forwarded is not None else None
    if message is None:
        raise DecodeError("archive <result> holds no <forwarded><message xmlns='jabber:client'>", where)
    delay = get_child(forwarded, "delay", NS_DELAY)  # type: ignore[arg-type]
    when = parse_stamp(delay.attr.get("stamp")) if delay is not None else None
    if when is None:
        raise DecodeError("archive <result> has no parsable <delay stamp>", where)
    return ArchiveItem(key=key, value=_clone(message), when=when, with_=_derive_with(message, user_jid))


def _decode_pep_item(item: Element, user_jid: str, where: str) -> ArchiveItem:
    key = item.attr.get("id")
    if key is None:
        raise DecodeError("PEP <item> has no id", where)
    payload = next((c for c in item.children if isinstance(c, Element)), None)
    if payload is None:
        raise DecodeError("PEP <item> holds no element", where)
    return ArchiveItem(key=key, value=_clone(payload), when=0, with_=user_jid)
