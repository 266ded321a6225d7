"""Hypothesis strategies over our Lua-value model, shared by the codec tests."""

from __future__ import annotations

import math

from hypothesis import strategies as st

from ansible_collections.xmpp.prosody.plugins.module_utils.luadata import BoolKey

INF = math.inf

# -- strategies over our Lua-value model -------------------------------------------------------

byte_strings = st.binary(max_size=10).map(lambda raw: raw.decode("utf-8", "surrogateescape"))
strings = st.one_of(
    st.text(max_size=10),
    byte_strings,
    st.sampled_from(["", "__array", "__hash", "1", "null", "\\u0041", "\\", '"', "a\x00b", "\x7f", "é😀"]),
)
integers = st.one_of(st.integers(-3, 5), st.integers(-(2**63), 2**63 - 1))
finite_floats = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.1 + 0.2, 1 / 3, 1.0, -0.0, 2.0**53, 2.0**53 + 2, 1e15, 1e16, 1e300, 5e-324, 2.0**63]),
)
nonfinite_floats = st.sampled_from([INF, -INF, math.nan])


# Float keys in our model are never integral within Lua's integer range (Lua converts those).
finite_keys = st.one_of(
    st.floats(-1e6, 1e6).map(lambda f: f + 0.5 if f.is_integer() else f),
    st.sampled_from([0.1 + 0.2, 1 / 3, -2.25, 1e20, -1e300, 2.0**63, 5e-324]),
)


def lua_values(floats: st.SearchStrategy[float], float_keys: st.SearchStrategy[float]) -> st.SearchStrategy:
    keys = st.one_of(strings, st.integers(-1, 7), integers, float_keys, st.booleans().map(BoolKey))
    scalars = st.one_of(st.booleans(), integers, floats, strings)
    return st.recursive(scalars, lambda inner: st.dictionaries(keys, inner, max_size=4), max_leaves=6)


finite_values = lua_values(finite_floats, finite_keys)
# Only infinities and NaN as floats: the values Prosody's own encoder writes as unreadable text.
nonfinite_values = lua_values(nonfinite_floats, st.sampled_from([INF, -INF]))
# What our encoder must write readably: every float but NaN.
encodable_values = lua_values(st.one_of(finite_floats, st.sampled_from([INF, -INF])), finite_keys | st.just(INF))


def has_nonfinite(value: object) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(has_nonfinite(k) or has_nonfinite(v) for k, v in value.items())
    return False
