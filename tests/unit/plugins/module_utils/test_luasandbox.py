# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Lua sandbox: it reads what Lua reads, and hostile files fail fast without touching anything."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ansible_collections.xmpp.prosody.plugins.module_utils import luasandbox
from ansible_collections.xmpp.prosody.plugins.module_utils.luadata import (
    BoolKey,
    LuaDataError,
    dumps_dat,
    dumps_list,
    loads_dat,
    loads_list,
)
from ansible_collections.xmpp.prosody.plugins.module_utils.luasandbox import isolation_mode, sandbox_load

from prosody_oracle import canon

MODES = ["inprocess", "subprocess"]


def test_lupa_2_runs_in_process() -> None:
    assert luasandbox._detected_mode() == "inprocess"


def test_old_lupa_without_max_memory_uses_a_subprocess(monkeypatch: pytest.MonkeyPatch) -> None:
    class OldRuntime:
        def __init__(self, **kwargs: object) -> None:
            if "max_memory" in kwargs:  # lupa 1.x: unknown keyword
                raise TypeError("__init__() got an unexpected keyword argument 'max_memory'")

    class OldLupa:
        LuaRuntime = OldRuntime

    monkeypatch.delenv(luasandbox.ISOLATION_ENV, raising=False)
    monkeypatch.setattr(luasandbox, "_lupa_module", lambda: OldLupa)
    luasandbox._detected_mode.cache_clear()
    try:
        assert isolation_mode() == "subprocess"
    finally:
        luasandbox._detected_mode.cache_clear()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("text", "value"),
    [
        (b'return { a = 1 + 1, ["b"] = ("x"):rep(3) }', {"a": 2, "b": "xxx"}),
        (b"local t = {} t.x = 1 return t", {"x": 1}),
        (b"return { 1, 2.0, -0.0, 2^63, math_type }", {1: 1, 2: 2.0, 3: -0.0, 4: 2.0**63}),
        (b"return { [true] = false, [1.5] = 1/0, nan = 0/0 }", {BoolKey(True): False, 1.5: math.inf, "nan": math.nan}),
        (b'return "\\255\\0" .. ("\\u{e9}"):upper()', "\udcff\x00\u00e9"),
        (b"return nil", None),
        (b"", None),
        (b"local s = ('ab'):sub(2) return { s, #s, ('abc'):byte(3) }", {1: "b", 2: 1, 3: 99}),
    ],
)
def test_reads_what_lua_reads(mode: str, text: bytes, value: object) -> None:
    assert canon(sandbox_load(text, "f.dat", "dat", isolation=mode)) == canon(value)


@pytest.mark.parametrize("mode", MODES)
def test_list_files_get_prosodys_item(mode: str) -> None:
    text = b"for i = 1, 3 do item({ n = i }) end item(nil) item(false) item('a', 'ignored')"
    assert sandbox_load(text, "f.list", "list", isolation=mode) == [{"n": 1}, {"n": 2}, {"n": 3}, False, "a"]


values = st.recursive(
    st.one_of(
        st.booleans(),
        st.integers(-(2**63), 2**63 - 1),
        st.floats(),
        st.binary(max_size=8).map(lambda b: b.decode("utf-8", "surrogateescape")),
    ),
    lambda children: st.dictionaries(
        st.one_of(st.text(max_size=5), st.integers(-3, 9), st.booleans().map(BoolKey)), children, max_size=4
    ),
    max_leaves=12,
)


@given(st.lists(values, min_size=1, max_size=4))
def test_sandbox_and_strict_reader_agree(items: list[object]) -> None:
    """The sandbox brings back the same data as the strict reader from Prosody-format text."""
    for value in items:
        text = dumps_dat(value)
        assert (
            canon(sandbox_load(text, "v.dat", "dat")) == canon(loads_dat(text, "v.dat", sandbox=False)) == canon(value)
        )
    text = dumps_list(items)
    assert [canon(v) for v in sandbox_load(text, "v.list", "list")] == [canon(v) for v in items]


# ---------------------------------------------------------------------------------------------
# Hostile files: each must fail fast, naming the file, and change nothing.

HOSTILE = {
    "endless-loop": b"while true do end",
    "endless-recursion": b"local function f() return f() end return f()",
    "deep-recursion": b"local function f() return 1 + f() end return f()",
    "unbounded-table": b"local t = {} local i = 0 while true do i = i + 1 t[i] = {i} end",
    "string-rep-bomb": b'return ("x"):rep(2^40)',
    "string-rep-bomb-in-table": b'local s = ("x"):rep(2^24) local t = {} for i = 1, 64 do t[i] = s .. i end return t',
    "concat-bomb": b'local s = "x" while true do s = s .. s end',
    "shared-table-bomb": b"local t = {1} for i = 1, 64 do t = {t, t} end return t",
    "nesting-in-source": b"return " + b"{" * 10000 + b"}" * 10000,
    "nesting-at-runtime": b"local t = {} for i = 1, 100000 do t = {t} end return t",
    "os-execute": b'os.execute("touch MARKER") return 1',
    "io-open": b'local f = io.open("MARKER", "w") f:write("x") f:close()',
    "require": b'require("os").execute("touch MARKER")',
    "load": b"load(\"os.execute('touch MARKER')\")()",
    "string-gsub-callback": b'return ("x"):gsub(".", print)',
    "string-dump": b"return ('').dump(function() end)",
    "string-find-backtracking": b'return ("a"):rep(40):find(("a?"):rep(40) .. ("a"):rep(40))',
    "debug": b"debug.sethook() while true do end",
    "setmetatable": b"return setmetatable({}, { __index = function() end })",
    "getmetatable": b'getmetatable("").__index = nil',
    "collectgarbage": b'collectgarbage("stop") return 1',
    "pcall": b"return pcall(function() while true do end end)",
    "python-bridge": b"return python.eval('1')",
    "bytecode": b"\x1bLuaT\x00\x19\x93\r\n\x1a\n",
    "function-value": b"return { f = function() end }",
    "coroutine-value": b"return coroutine.create(function() end)",
    "cycle": b"local t = {} t[1] = t return t",
    "table-key": b"return { [{}] = 1 }",
    "syntax-error": b"return {",
    "runtime-error": b"return nil + 1",
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_files_fail_fast_and_touch_nothing(
    mode: str, name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "MARKER"
    source = str(tmp_path / f"{name}.dat")
    text = HOSTILE[name].replace(b"MARKER", str(marker).encode())
    monkeypatch.setenv(luasandbox.ISOLATION_ENV, mode)
    monkeypatch.chdir(tmp_path)  # a relative path, had it escaped, would land here too
    before = sorted(os.listdir(tmp_path))
    start = time.monotonic()
    with pytest.raises(LuaDataError) as info:
        loads_dat(text, source)  # through the strict reader, as the product reads files
    elapsed = time.monotonic() - start
    assert str(info.value).startswith(source + ": ")
    assert info.value.source == source
    assert elapsed < 10, f"{name} took {elapsed:.1f} s"
    assert not marker.exists()
    assert sorted(os.listdir(tmp_path)) == before


@pytest.mark.parametrize(
    "text",
    [b'item(os.execute("touch MARKER"))', b"item(item)", b"while true do item(1) end", b"item(debug.getinfo(1))"],
)
def test_hostile_list_files(text: bytes, tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    with pytest.raises(LuaDataError, match=r"^evil\.list: "):
        loads_list(text.replace(b"MARKER", str(marker).encode()), "evil.list")
    assert not marker.exists()


def test_limits_scale_with_the_file() -> None:
    memory, budget = luasandbox.limits_for(b"x" * 1_000_000)
    assert memory > luasandbox.BASE_MEMORY and budget > luasandbox.BASE_INSTRUCTIONS


def test_a_large_legitimate_file_fits_the_limits() -> None:
    items = [{"key": f"k{i}", "when": 1.5e9 + i, "body": "x" * 200, "attr": {"to": "a@b"}} for i in range(5000)]
    text = dumps_list(items).replace(b"item(", b"item (")  # same data, still Lua
    assert sandbox_load(text, "big.list", "list") == items
