"""The oracle itself: Lua's canon and ours must agree, or every interop test proves nothing."""

from __future__ import annotations

import pytest

from ansible_collections.xmpp.prosody.plugins.module_utils.luadata import BoolKey

from prosody_oracle import canon, run_lua

VALUES = [
    None,
    True,
    False,
    0,
    -(2**63),
    2**63 - 1,
    1.0,
    -0.0,
    0.1,
    float("inf"),
    float("-inf"),
    float("nan"),
    "",
    "caf\u00e9\x00",
    "bad \udcff byte",
    {},
    {1: "a", 2: "b", 5: "hole"},
    {"x": {"y": {}}, BoolKey(True): 1, BoolKey(False): 0, 1: True, 2.5: "f"},
]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_lua_round_trips_our_canon(value: object) -> None:
    """canon.decode then canon.encode in real Lua gives back exactly our bytes."""
    out = run_lua('io.write(canon.encode(canon.decode(io.read("a"))))', stdin=canon(value))
    assert out == canon(value)


def test_lua_literals_match_our_canon() -> None:
    """Values built by Lua itself encode as our model says they should."""
    out = run_lua('io.write(canon.encode({1, 2.0, "\\255", [true] = false, k = 0/0}))')
    assert out == canon({1: 1, 2: 2.0, 3: "\udcff", BoolKey(True): False, "k": float("nan")})
