# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""End to end: data written by real Prosody's file storage, migrated into PostgreSQL by the role
xmpp.prosody.prosody_migrate (ansible-playbook on localhost), served by a real Prosody whose
config the role switched to SQL, and read back by a real XMPP client (slixmpp).

The role must succeed, verify what it wrote, write the storage block the server then runs on,
and change nothing when run again.

Each user logs in with the original password over SCRAM-SHA-1 (so the migrated salted keys
work), then fetches roster, vCard and message archive (MAM); the MUC room's configuration,
affiliations and history (MUC MAM) are read as its owner. Everything must equal the source data
as read from the file store.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, Union

import pytest
from e2e_support import HOST, MUC, STORES, USERS, Migration, Server, ServerConfig, password
from slixmpp import ClientXMPP, Iq
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from ansible_collections.xmpp.prosody.plugins.module_utils.backends.base import ArchiveItem
from ansible_collections.xmpp.prosody.plugins.module_utils.backends.internal import InternalBackend
from ansible_collections.xmpp.prosody.plugins.module_utils.stanza import Element

TIMEOUT = 15  # seconds for any one network step
ROOM = f"room1@{MUC}"
# o'brien's data is migrated too, but "'" is not allowed in a JID's localpart (RFC 7622 and
# Prosody's nodeprep), so no client can log in as that user or name it in a MAM filter.
LOGIN_USERS = tuple(user for user in USERS if "'" not in user)
ROOM_OWNER = USERS[0]  # make_corpus.lua makes username(1) the owner, username(2) a member
XML_NS = "http://www.w3.org/XML/1998/namespace"
MAM = "urn:xmpp:mam:2"
Tree = tuple[str, frozenset, str, tuple]  # (qualified name, attributes, text, children)


# --- an XMPP session ---------------------------------------------------------------------------


class Client(ClientXMPP):
    """A slixmpp client on a plain loopback stream that collects MAM results as they arrive."""

    def __init__(self, jid: str, secret: str) -> None:
        # No certificate on the test server: plain TCP, where SCRAM (which never sends the
        # password) is safe enough for a loopback test. Only SCRAM-SHA-1 is accepted.
        mechanisms = {"feature_mechanisms": {"unencrypted_scram": True}}
        super().__init__(jid, secret, plugin_config=mechanisms, sasl_mech="SCRAM-SHA-1")
        self.enable_direct_tls = False
        self.enable_starttls = False
        self.enable_plaintext = True
        self.mam_results: list[ET.Element] = []
        self.ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.add_event_handler("session_start", lambda _: self._settle("ok"))
        self.add_event_handler("failed_auth", lambda _: self._settle("authentication failed"))
        self.add_event_handler("no_auth", lambda _: self._settle("no usable SASL mechanism"))
        self.add_event_handler("disconnected", lambda _: self._settle("disconnected"))
        self.register_handler(
            Callback("e2e mam", MatchXPath(f"{{jabber:client}}message/{{{MAM}}}result"), self._mam_result)
        )

    async def join_for_subject(self, occupant: str) -> ET.Element:
        """Join a room without history; return the subject message the room sends on joining."""
        subject: asyncio.Future[ET.Element] = asyncio.get_running_loop().create_future()

        def seen(message: Any) -> None:
            if not subject.done():
                subject.set_result(message.xml)

        self.register_handler(
            Callback("e2e subject", MatchXPath("{jabber:client}message/{jabber:client}subject"), seen)
        )
        presence = self.make_presence(pto=occupant)
        presence.append(ET.fromstring('<x xmlns="http://jabber.org/protocol/muc"><history maxstanzas="0"/></x>'))
        presence.send()
        return await asyncio.wait_for(subject, TIMEOUT)

    def _settle(self, outcome: str) -> None:
        if not self.ready.done():
            self.ready.set_result(outcome)

    def _mam_result(self, message: Any) -> None:
        self.mam_results.append(message.xml.find(f"{{{MAM}}}result"))

    async def query(self, to: str | None, payload: str, kind: str = "get") -> ET.Element:
        """Send an iq with this XML payload; return the answer's payload (raises on an error reply)."""
        iq = Iq(self, stype=kind, sto=to)
        iq.append(ET.fromstring(payload))
        answer = await iq.send(timeout=TIMEOUT)
        return answer.xml

    async def mam(self, to: str | None, with_jid: str | None = None) -> tuple[list[ET.Element], ET.Element]:
        """All of an archive's items in one page (the corpus keeps it under the page limit)."""
        self.mam_results = []
        fields = '<field var="FORM_TYPE" type="hidden"><value>urn:xmpp:mam:2</value></field>'
        if with_jid:
            fields += f'<field var="with"><value>{with_jid}</value></field>'
        answer = await self.query(
            to,
            f'<query xmlns="{MAM}" queryid="e2e"><x xmlns="jabber:x:data" type="submit">{fields}</x>'
            '<set xmlns="http://jabber.org/protocol/rsm"><max>100</max></set></query>',
            "set",
        )
        return list(self.mam_results), answer.find(f"{{{MAM}}}fin")


@asynccontextmanager
async def session(user: str, port: int) -> AsyncIterator[Client]:
    """A logged-in session for ``user`` with the corpus password, closed on exit."""
    client = Client(f"{user}@{HOST}/e2e", password(user))
    client.connect("127.0.0.1", port)
    try:
        outcome = await asyncio.wait_for(client.ready, TIMEOUT)
        assert outcome == "ok", f"{user}@{HOST} could not log in: {outcome}"
        yield client
    finally:
        client.disconnect()
        await asyncio.wait_for(client.disconnected, TIMEOUT)


def run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, 4 * TIMEOUT))


# --- comparing XML -----------------------------------------------------------------------------


def from_prosody(element: Element, parent_ns: str) -> Tree:
    """A stanza as our model holds it (Prosody's form: xmlns inherited when absent)."""
    ns = element.attr.get("xmlns", parent_ns)
    attrs = frozenset(
        (f"{{{XML_NS}}}{key[4:]}" if key.startswith("xml:") else key, value)
        for key, value in element.attr.items()
        if key != "xmlns"
    )
    text = "".join(child for child in element.children if isinstance(child, str))
    kids = tuple(from_prosody(child, ns) for child in element.children if isinstance(child, Element))
    return (f"{{{ns}}}{element.name}", attrs, text.strip(), kids)


def from_wire(element: ET.Element) -> Tree:
    """A received element, in the same shape as from_prosody's."""
    text = (element.text or "") + "".join(child.tail or "" for child in element)
    return (element.tag, frozenset(element.attrib.items()), text.strip(), tuple(from_wire(c) for c in element))


def stamp(element: ET.Element) -> int:
    return int(datetime.fromisoformat(element.attrib["stamp"].replace("Z", "+00:00")).timestamp())


def archive_view(results: Iterable[ET.Element]) -> list[tuple[str, int, Tree]]:
    """What a MAM result set says of each item: its key, time and the archived stanza."""
    view = []
    for result in results:
        forwarded = result.find("{urn:xmpp:forward:0}forwarded")
        delay = forwarded.find("{urn:xmpp:delay}delay")
        message = forwarded.find("{jabber:client}message")
        view.append((result.attrib["id"], stamp(delay), from_wire(message)))
    return view


def source_view(items: Iterable[ArchiveItem]) -> list[tuple[str, int, Tree]]:
    return [(item.key, int(item.when), from_prosody(item.value, "jabber:client")) for item in items]


def form_values(form: ET.Element) -> dict[str, Union[str, list[str]]]:
    """A data form's fields: var -> value (a list for multi-valued fields)."""
    values: dict[str, Union[str, list[str]]] = {}
    for field in form.iter("{jabber:x:data}field"):
        texts = [v.text or "" for v in field.findall("{jabber:x:data}value")]
        values[field.attrib.get("var", "")] = texts[0] if len(texts) == 1 else texts
    return values


def as_bool(value: Any) -> bool:
    return value in ("1", "true")


# --- the tests ---------------------------------------------------------------------------------

BLOCK = re.compile(
    r"^-- BEGIN xmpp\.prosody\.prosody_migrate: storage\n(.*?)^-- END xmpp\.prosody\.prosody_migrate: storage\n",
    re.MULTILINE | re.DOTALL,
)
# Runs a config fragment as Prosody's config loader does (util.envload, globals into a table) and prints them.
READ_CONFIG = """
package.path = "/usr/lib/prosody/?.lua;" .. package.path
local settings = {}
local chunk = assert(require "util.envload".envload(io.read("a"), "=block", settings))
chunk()
io.write(require "util.json".encode(settings))
"""


def test_role_migrates_verifies_and_switches_storage(migration: Migration) -> None:
    """The role's first run moves every store and verifies it; the second changes nothing."""
    first, second, result = migration.first, migration.second, migration.result
    assert first.returncode == 0 and first.recap["failed"] == 0 and first.recap["changed"] > 0, first.output
    assert result["verified"] is True, result
    assert (result["mismatches"], result["failures"], result["stopped"]) == ([], [], False)
    assert result["totals"]["users_created"] > 0 and result["totals"]["items_created"] > 0
    assert result["totals"]["users_failed"] == result["totals"]["items_failed"] == 0
    assert {(entry["host"], entry["store"]) for entry in result["stores"]} >= {
        (host, store.split("-", maxsplit=1)[0]) for host, stores in STORES.items() for store in stores
    }
    assert second.returncode == 0 and second.recap["failed"] == 0, second.output
    assert second.recap["changed"] == 0, second.output
    # Prosody was stopped and started once, by the first run only.
    assert migration.service_calls == ["stop", "start"]


def test_role_wrote_the_storage_block_the_server_runs_on(migration: Migration, server_config: ServerConfig) -> None:
    """prosody.cfg.lua is the test's own plus the role's block, which Prosody's loader reads as SQL storage."""
    text = server_config.path.read_text(encoding="utf-8")
    blocks = BLOCK.findall(text)
    assert len(blocks) == 1, text
    assert BLOCK.sub("", text) == server_config.original
    assert text.index("-- BEGIN xmpp.prosody.prosody_migrate") < text.index('VirtualHost "example.org"')
    lua = subprocess.run(["lua5.4", "-e", READ_CONFIG], input=blocks[0], capture_output=True, text=True, check=True)
    assert json.loads(lua.stdout) == {"storage": "sql", "sql": migration.destination}


@pytest.mark.parametrize("user", LOGIN_USERS)
def test_user_data_survives_migration(user: str, server_log: Server, source: InternalBackend) -> None:
    """Login (SCRAM keys), roster, vCard and archive of each user, as the server gives them back."""
    run(_check_user(user, source, server_log.port))


async def _check_user(user: str, source: InternalBackend, port: int) -> None:
    async with session(user, port) as client:
        await _check_roster(client, source.keyval_get(HOST, "roster", user), f"{user}@{HOST}")
        vcard = await client.query(None, '<vCard xmlns="vcard-temp"/>')
        assert from_wire(vcard.find("{vcard-temp}vCard")) == from_prosody(
            Element.deserialize(source.keyval_get(HOST, "vcard", user), "source vcard"), ""
        )
        await _check_archive(client, list(source.archive_items(HOST, "archive", user)))


async def _check_roster(client: Client, roster: dict[Any, Any], own_jid: str) -> None:
    answer = await client.query(None, '<query xmlns="jabber:iq:roster"/>')
    got = {}
    for item in answer.iter("{jabber:iq:roster}item"):
        groups = sorted(g.text or "" for g in item.findall("{jabber:iq:roster}group"))
        got[item.attrib["jid"]] = (item.get("subscription"), item.get("name"), item.get("ask"), groups)
    want = {
        contact: (entry["subscription"], entry.get("name"), entry.get("ask"), sorted(entry.get("groups") or {}))
        for contact, entry in roster.items()
        # mod_roster never lists the user's own JID, which the corpus puts in some rosters.
        if isinstance(contact, str) and contact != own_jid
    }
    assert got == want
    assert len(got) >= 4  # the corpus gives everyone the other users as contacts


async def _check_archive(client: Client, items: list[ArchiveItem]) -> None:
    results, fin = await client.mam(None)
    assert fin is not None and fin.get("complete") == "true"
    assert archive_view(results) == source_view(items)
    assert len(results) == 20
    # The archive's "with" column came along: the server filters on it.
    peer = next(item.with_ for item in items if "'" not in item.with_)
    filtered, _unused = await client.mam(None, peer)
    assert [r.attrib["id"] for r in filtered] == [item.key for item in items if item.with_ == peer]


def test_muc_room_survives_migration(server_log: Server, source: InternalBackend) -> None:
    """The room's config, subject and affiliations, read by its owner."""
    run(_check_room(source, server_log.port))


async def _check_room(source: InternalBackend, port: int) -> None:
    config = source.keyval_get(MUC, "config", "room1")
    data = config["_data"]
    async with session(ROOM_OWNER, port) as client:
        info = await client.query(ROOM, '<query xmlns="http://jabber.org/protocol/disco#info"/>')
        identity = info.find(
            "{http://jabber.org/protocol/disco#info}query/{http://jabber.org/protocol/disco#info}identity"
        )
        assert identity.attrib == {"category": "conference", "type": "text", "name": data["name"]}
        features = {f.attrib["var"] for f in info.iter("{http://jabber.org/protocol/disco#info}feature")}
        assert {"muc_persistent", "muc_public", "muc_semianonymous", MAM} <= features
        roominfo = form_values(info.find(".//{jabber:x:data}x"))
        assert roominfo["muc#roominfo_description"] == data["description"]
        subject = await client.join_for_subject(f"{ROOM}/e2e")
        assert (subject.get("from"), subject.findtext("{jabber:client}subject")) == (
            data["subject_from"],
            data["subject"],
        )

        owner = await client.query(ROOM, '<query xmlns="http://jabber.org/protocol/muc#owner"/>')
        form = form_values(owner.find(".//{jabber:x:data}x"))
        assert {
            "name": form["muc#roomconfig_roomname"],
            "description": form["muc#roomconfig_roomdesc"],
            "persistent": as_bool(form["muc#roomconfig_persistentroom"]),
            "public": as_bool(form["muc#roomconfig_publicroom"]),
            "whois": form["muc#roomconfig_whois"],
            "history_length": int(form["muc#roomconfig_historylength"]),
        } == {key: data[key] for key in ("name", "description", "persistent", "public", "whois", "history_length")}

        affiliations = {}
        for kind in ("owner", "member"):
            answer = await client.query(
                ROOM, f'<query xmlns="http://jabber.org/protocol/muc#admin"><item affiliation="{kind}"/></query>'
            )
            for item in answer.iter("{http://jabber.org/protocol/muc#admin}item"):
                affiliations[item.attrib["jid"]] = (item.attrib["affiliation"], item.get("nick"))
        assert affiliations == {
            jid: (role, (config.get("_affiliation_data") or {}).get(jid, {}).get("reserved_nickname"))
            for jid, role in config["_affiliations"].items()
        }


def test_muc_history_survives_migration(server_log: Server, source: InternalBackend) -> None:
    """The room's history as MUC MAM gives it, item for item."""
    run(_check_room_history(source, server_log.port))


async def _check_room_history(source: InternalBackend, port: int) -> None:
    items = list(source.archive_items(MUC, "muc_log", "room1"))
    async with session(ROOM_OWNER, port) as client:
        results, fin = await client.mam(ROOM)
        assert fin is not None and fin.get("complete") == "true"
        assert archive_view(results) == source_view(items)
        assert len(results) == 20
