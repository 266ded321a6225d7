# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Strict value comparison, secret masking and the report's JSON form."""

from __future__ import annotations

import copy
import json
import math
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from ansible_collections.xmpp.prosody.plugins.module_utils.backends.base import ArchiveItem
from ansible_collections.xmpp.prosody.plugins.module_utils.compare import same_value
from ansible_collections.xmpp.prosody.plugins.module_utils.luadata import BoolKey, dumps, loads_value
from ansible_collections.xmpp.prosody.plugins.module_utils.report import (
    MASK,
    Failure,
    Report,
    Scrubber,
    StoreResult,
    find_secrets,
    is_secret,
    jsonable,
    mask_secrets,
)
from ansible_collections.xmpp.prosody.plugins.module_utils.stanza import Element

from prosody_oracle import canon

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True),
    st.text(st.characters(codec="utf-8") | st.sampled_from(["\udcff", "\x00"]), max_size=8),
)
keys = st.one_of(st.integers(-5, 5), st.text(max_size=6), st.booleans().map(BoolKey), st.floats(0.5, 9.5))
values = st.recursive(scalars, lambda inner: st.dictionaries(keys, inner, max_size=5), max_leaves=20)


# comparison ----------------------------------------------------------------------------------
@given(values)
def test_a_value_equals_its_copy_and_its_round_trip(value: Any):
    assert same_value(value, copy.deepcopy(value))
    # Through Prosody's file format (our writer is tested against real Prosody elsewhere) and back.
    if value is not None:
        assert same_value(loads_value(dumps(value), "test"), value)


def _lua(value: Any) -> Any:
    """The value as a Lua table holds it: nil fields gone."""
    if isinstance(value, dict):
        return {k: _lua(v) for k, v in value.items() if v is not None}
    return value


@given(values, values)
def test_same_value_agrees_with_canonical_bytes(a: Any, b: Any):
    # canon() is the type-tagged encoding real Lua produces too: equal data, equal bytes.
    assert same_value(a, b) == (canon(_lua(a)) == canon(_lua(b)))


def test_lua_distinctions_are_kept():
    differ = [
        (1, 1.0),
        (1, True),
        (0.0, -0.0),
        ({1: "a"}, {BoolKey(True): "a"}),
        ({1: "a"}, {"1": "a"}),
        ("a", "a\x00"),
        ("\udcff", "\xff"),
    ]
    assert not any(same_value(x, y) or same_value(y, x) for x, y in differ)  # both orders
    assert same_value(math.nan, float("nan")) and same_value({"x": math.nan}, {"x": -math.nan})
    assert same_value({"a": 1, "b": None}, {"a": 1})  # a nil field is no field in Lua


def test_stanzas_compare_as_xml():
    file_form = Element("item", {"xmlns": "urn:x", "id": "1"}, [Element("title", {}, ["a", "", "b"])])
    sql_form = Element("item", {"id": "1", "xmlns": "urn:x"}, [Element("title", {"xmlns": "urn:x"}, ["ab"])])
    assert same_value(file_form, sql_form)
    other_ns = Element("item", {"xmlns": "urn:x", "id": "1"}, [Element("title", {"xmlns": "urn:y"}, ["ab"])])
    assert not same_value(file_form, other_ns)
    assert not same_value(file_form, Element("item", {"xmlns": "urn:x", "id": "2"}, [Element("title", {}, ["ab"])]))
    assert not same_value(file_form, file_form.preserialize())
    item = ArchiveItem("k", file_form, 5, None)
    assert same_value(item, ArchiveItem("k", sql_form, 5, None))
    assert not same_value(item, ArchiveItem("k", sql_form, 5.0, None))
    assert not same_value(item, ArchiveItem("k", sql_form, 5, "peer@example.org"))


# secrets -------------------------------------------------------------------------------------
def test_secret_fields_are_masked_at_any_depth():
    value = {
        "stored_key": "00ff" * 10,
        "salt": "abc",
        "iteration_count": 4096,
        "nested": {"oauth_token": "t0k", "api_secret": {"x": "y"}, "user_password": "p", "public_key": "not hex!"},
        "signing_key": "DEADBEEF" * 4,
        "groups": {"Friends": True},
        1: "positional",
    }
    assert mask_secrets(value) == {
        "stored_key": MASK,
        "salt": MASK,
        "iteration_count": 4096,
        "nested": {"oauth_token": MASK, "api_secret": MASK, "user_password": MASK, "public_key": "not hex!"},
        "signing_key": MASK,
        "groups": {"Friends": True},
        1: "positional",
    }


# Key names near the secret ones: other cases, other scripts' letters that fold to ASCII (the
# Kelvin sign lowers to "k"), newlines inside keys (the quick check joins keys with them).
secret_words = st.sampled_from(
    ["password", "passwd", "secret", "token", "salt", "stored_key", "server_key", "_key", "key"]
)
secret_keys = st.builds(
    lambda word, upper, kelvin, before, after: (
        before + (word.upper() if upper else word).replace("k", "\u212a" if kelvin else "k") + after
    ),
    secret_words,
    st.booleans(),
    st.booleans(),
    st.sampled_from(["", "x", "\n", "a_"]),
    st.sampled_from(["", "s", "\n", "\nx"]),
)
secret_values = st.recursive(
    scalars | st.just("00FF" * 5),
    lambda inner: st.dictionaries(keys | secret_keys, inner, max_size=5),
    max_leaves=20,
)


def _secrets_key_by_key(value: Any, found: set[str]) -> None:
    """find_secrets as is_secret defines it, every key asked."""
    if isinstance(value, dict):
        for k, v in value.items():
            if is_secret(k, v):
                stack = [v]
                while stack:
                    item = stack.pop()
                    if isinstance(item, str) and len(item) >= 4:
                        found.add(item)
                    elif isinstance(item, dict):
                        stack.extend(item.values())
            else:
                _secrets_key_by_key(v, found)


@given(secret_values)
def test_finding_secrets_by_the_quick_check_misses_none(value: Any):
    quick: set[str] = set()
    find_secrets(value, quick)
    reference: set[str] = set()
    _secrets_key_by_key(value, reference)
    assert quick == reference


def test_scrubber_masks_secrets_and_their_previews():
    scrub = Scrubber()
    secret = "correct horse battery staple and more"
    scrub.learn({"accounts": {"password": secret, "plain": "visible"}})
    scrub.add("dbpass")
    text = f"cannot store {secret!r}; preview {secret[:20]}...; login dbpass; visible"
    assert scrub(text) == f"cannot store '{MASK}'; preview {MASK}...; login {MASK}; visible"


def test_scrubber_forgets_the_datas_secrets_but_not_the_configurations():
    scrub = Scrubber()
    scrub.learn({"password": "learnt-from-the-data"})
    scrub.add("from-the-config")
    scrub.forget()
    assert scrub("learnt-from-the-data from-the-config") == f"learnt-from-the-data {MASK}"


# the report ----------------------------------------------------------------------------------
@given(values)
def test_any_value_becomes_json(value: Any):
    json.dumps(jsonable(value), allow_nan=False).encode("utf-8")


def test_to_dict_shape():
    report = Report(check=True, diff_enabled=True)
    result = report.store_result("example.org", "roster", "keyval")
    result.users_created = 2
    assert report.store_result("example.org", "roster", "keyval") is result
    report.store_result("example.org", "archive", "archive").items_created = 7
    report.failures.append(Failure("example.org", "roster", "bob", "broken file /x"))
    report.diff.append({"host": "example.org", "store": "roster", "user": "bob", "type": "keyval"})
    out = report.to_dict()
    assert list(out) == [
        "changed",
        "failed",
        "stopped",
        "check",
        "stores",
        "totals",
        "failures",
        "warnings",
        "discovered",
        "verified",
        "mismatches",
        "diff",
    ]
    assert out["stores"][0] == {**vars(StoreResult("example.org", "roster", "keyval")), "users_created": 2}
    assert out["totals"]["users_created"] == 2 and out["totals"]["items_created"] == 7
    assert out["failures"] == [
        {"host": "example.org", "store": "roster", "user": "bob", "reason": "broken file /x", "scope": "user"}
    ]
    assert "diff" not in Report().to_dict()
    json.dumps(out, allow_nan=False)
