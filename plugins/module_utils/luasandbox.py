# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run an untrusted Lua data file in a sandbox (lupa) and bring its value back into our model.

Used only for files the strict reader in luadata.py does not accept. What holds the file in:

* it is loaded text-only (``load(src, name, "t", env)``: no precompiled bytecode) with an empty
  environment (``.list`` files get only ``item``, which behaves as Prosody's list_load's; a
  migrator.cfg.lua gets prosody-migrator's: every global name is a store-defining function), so
  no global (``os``, ``io``, ``require``, ``load``, ``debug``, ``setmetatable``, ``collectgarbage``...)
  is reachable;
* the string metatable (``("x"):rep(3)`` is the only way out of the empty environment) is cut
  down to byte, char, len, lower, upper, rep, reverse and sub: no ``dump``, and no pattern
  matching, whose backtracking could burn CPU inside one C call where no hook fires;
* a count hook (``debug.sethook``, installed by trusted code right before the chunk runs) stops
  it after a budget of VM instructions: loops, recursion, and the conversion of what it returned;
* its memory is capped. With lupa >= 2 this is the runtime's own allocator limit (``max_memory``),
  in process, with a fresh runtime per file. Older lupa (Debian 12 ships 1.14) has no such limit:
  the sandbox then runs in a short-lived child process (``sys.executable``) whose address space
  is capped with RLIMIT_AS (plus RLIMIT_CPU and a wall-clock timeout).

The value is walked by trusted Lua code (cycles, functions, userdata, threads, table keys and
tables deeper than 127 are refused) into a flat tagged text that Python decodes without
recursion: integers stay integers (``math.type``), strings cross as bytes and are decoded with
``surrogateescape``.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from typing import Any

from .luadata import MAX_DEPTH, BoolKey, LuaDataError
from .luaerrors import describe

ISOLATION_ENV = "XMPP_PROSODY_LUA_SANDBOX"  # "inprocess" or "subprocess": force a mode (tests)
BASE_MEMORY = 64 * 1024 * 1024
BASE_INSTRUCTIONS = 20_000_000
SUBPROCESS_TIMEOUT = 30.0

# Trusted Lua: returns the runner. It is executed in the runtime's own globals before any
# untrusted text is loaded; the untrusted chunk only ever sees the env table built here.
_RUNNER = r"""
local load, pcall, error, type, next, tostring, setmetatable = load, pcall, error, type, next, tostring, setmetatable
local sethook, fmt, concat, tinsert = debug.sethook, string.format, table.concat, table.insert
local MAXDEPTH = %d
local mtype = math.type or function(n)
    -- Lua 5.1/LuaJIT (older lupa) has only doubles: past 2^53 an integer literal was already
    -- rounded by the parser, so refuse it rather than hand back a different number.
    if n %% 1 == 0 and (n > 2^53 or n < -2^53) then
        error("a whole number beyond 2^53 cannot be read exactly by this Lua (LuaJIT)", 0)
    end
    return (n %% 1 == 0) and "integer" or "float"
end
local safe = {}
for _, name in ipairs({"byte", "char", "len", "lower", "upper", "rep", "reverse", "sub"}) do
    safe[name] = string[name]
end
getmetatable("").__index = safe
python = nil
-- LuaJIT (Debian's lupa 1.x) skips count hooks inside compiled loops; the interpreter runs them.
if jit then jit.off() end

local out, n, onpath
local function put(s) n = n + 1; out[n] = s end
local function enc(v, depth)
    local t = type(v)
    if t == "string" then put("s" .. #v .. ":"); put(v)
    elseif t == "number" then
        if mtype(v) == "integer" then put(fmt("i%%d;", v))
        elseif v ~= v then put("n")
        else put(fmt("d%%.17g;", v)) end
    elseif t == "boolean" then put(v and "T" or "F")
    elseif t == "nil" then put("N")
    elseif t == "table" then
        if onpath[v] then error("a table contains itself (cycle)", 0) end
        if depth >= MAXDEPTH then error("tables nested deeper than " .. MAXDEPTH .. " levels", 0) end
        onpath[v] = true
        put("{")
        for k, x in next, v do
            local kt = type(k)
            if kt ~= "string" and kt ~= "number" and kt ~= "boolean" then
                error("a " .. kt .. " used as a table key is not supported", 0)
            end
            enc(k, depth + 1)
            enc(x, depth + 1)
        end
        put("}")
        onpath[v] = nil
    else
        error("a " .. t .. " cannot be stored as data", 0)
    end
end
local function encode(v)
    out, n, onpath = {}, 0, {}
    enc(v, 0)
    local s = concat(out)
    out, onpath = nil, nil
    return s
end
local function stop() error("instruction limit exceeded (endless loop?)", 0) end

return function(src, name, kind, budget)
    local env, items = {}, nil
    if kind == "list" then
        items = {}
        env.item = function(i) tinsert(items, i) end
    elseif kind == "value" then
        src = "return " .. src
    elseif kind == "config" then
        -- migrator.cfg.lua: every global name is a function defining the store of that name,
        -- the environment prosody-migrator gives the file.
        items = {}
        setmetatable(env, { __index = function(_, name) return function(def) items[name] = def end end })
    end
    -- Messages say where they come from (user code can forge any text, not this mark).
    local cmark, rmark = "\1C", "\1R"
    local f, err = load(src, name, "t", env)
    if not f then return false, cmark .. tostring(err) end
    sethook(stop, "", budget)
    local ok, res = pcall(f)
    if ok then
        if kind == "list" or kind == "config" then res = items end
        ok, res = pcall(encode, res)
    end
    sethook()
    out, onpath = nil, nil
    if not ok then return false, rmark .. tostring(res) end
    return true, res
end
""" % (MAX_DEPTH,)  # noqa: UP031 - Lua's own % signs make .format() and f-strings worse

# The child process for old lupa: reads the chunk on stdin, answers b"OK"+tagged or b"ER"+message.
_WORKER = r"""
import os, resource, sys
kind, name, memory, budget, cpu = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
runner_src = os.environ.pop("XMPP_PROSODY_LUA_RUNNER").encode()
src = sys.stdin.buffer.read()
try:
    import lupa.lua54 as lupa
except ImportError:
    import lupa
lua = lupa.LuaRuntime(encoding=None, register_eval=False, register_builtins=False, unpack_returned_tuples=True)
runner = lua.execute(runner_src)
try:
    with open("/proc/self/statm") as f:
        used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
except OSError:
    used = 512 * 1024 * 1024
# Capped only now: the interpreter and lupa are loaded, what is left to allocate is Lua's.
limit = used + 2 * memory + 32 * 1024 * 1024
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
try:
    ok, res = runner(src, name.encode("utf-8", "surrogateescape"), kind.encode(), budget)
except MemoryError:
    ok, res = False, b"not enough memory"
except lupa.LuaError as exc:
    ok, res = False, (str(exc).splitlines() or ["Lua error"])[0].encode("utf-8", "replace")
sys.stdout.buffer.write((b"OK" if ok else b"ER") + res)
"""


def limits_for(src: bytes) -> tuple[int, int]:
    """(memory bytes, VM instructions) allowed for a chunk: a floor plus room in proportion to its size."""
    return BASE_MEMORY + 16 * len(src), BASE_INSTRUCTIONS + 20 * len(src)


def _lupa_module() -> Any:
    try:
        import lupa.lua54 as module  # lupa >= 2 ships one module per Lua version
    except ImportError:
        try:
            import lupa as module  # lupa 1.x: one runtime, whatever it was built with
        except ImportError:
            return None
    return module


def isolation_mode() -> str:
    """How the memory cap is enforced here: "inprocess" (lupa's max_memory) or "subprocess" (RLIMIT_AS)."""
    forced = os.environ.get(ISOLATION_ENV)
    if forced in ("inprocess", "subprocess"):
        return forced
    return _detected_mode()


@functools.cache
def _detected_mode() -> str:
    module = _lupa_module()
    if module is None:
        return "missing"
    try:
        module.LuaRuntime(max_memory=BASE_MEMORY, register_eval=False, register_builtins=False)
    except Exception:  # lupa < 2 (TypeError), or 64-bit LuaJIT: no allocator limit
        return "subprocess"
    return "inprocess"


def sandbox_load(src: bytes, source: str, kind: str = "dat", isolation: str | None = None) -> Any:
    """Run a Lua data file in the sandbox; its value, or LuaDataError.

    ``kind``: "dat" (the chunk's return value), "list" (what it passes to ``item``), "value" (a
    Lua expression) or "config" (a migrator.cfg.lua: ``{name: value}`` for each ``name(value)``
    call of a global name, as prosody-migrator's environment collects them). A config's error
    reason is Lua's message told by luaerrors.describe, which never quotes the file's text.
    """
    if kind not in ("dat", "list", "value", "config"):
        raise ValueError(f"unknown kind {kind!r}")
    mode = isolation or isolation_mode()
    memory, budget = limits_for(src)
    # A fixed chunk name: the error names the file (source) itself, and Lua cuts long names.
    chunk = "config" if kind == "config" else "data"
    chunkname = "=" + chunk
    if mode == "inprocess":
        ok, res = _run_inprocess(src, chunkname, kind, memory, budget, source)
    elif mode == "subprocess":
        ok, res = _run_subprocess(src, chunkname, kind, memory, budget, source)
    else:
        raise LuaDataError("needs the Lua sandbox, but the lupa package is not installed", source)
    if not ok:
        reason = res.decode("utf-8", "replace") if isinstance(res, bytes) else str(res)
        raise LuaDataError(describe(reason, chunk, keep_names=kind == "config"), source)
    try:
        value = decode_tagged(res)
        if kind == "list":  # the items table is a sequence (filled by table.insert)
            return [value[i] for i in range(1, len(value) + 1)]
        return value
    except (ValueError, IndexError, KeyError) as exc:  # only if the trusted encoder and decoder disagree
        raise LuaDataError(f"unreadable sandbox result: {exc}", source) from None


def _run_inprocess(src: bytes, chunkname: str, kind: str, memory: int, budget: int, source: str) -> tuple[bool, Any]:
    module = _lupa_module()
    try:
        lua = module.LuaRuntime(
            encoding=None,
            register_eval=False,
            register_builtins=False,
            unpack_returned_tuples=True,
            max_memory=memory,
        )
        runner = lua.execute(_RUNNER.encode())
        name = chunkname.encode("utf-8", "surrogateescape")
        return runner(src, name, kind.encode(), budget)
    except MemoryError:
        return False, "not enough memory (the sandbox's limit)"
    except module.LuaError as exc:  # LuaMemoryError included; keep the message, not lupa's traceback
        return False, (str(exc).splitlines() or ["Lua error"])[0]


def _run_subprocess(src: bytes, chunkname: str, kind: str, memory: int, budget: int, source: str) -> tuple[bool, Any]:
    env = dict(os.environ)
    env["XMPP_PROSODY_LUA_RUNNER"] = _RUNNER
    # The child imports lupa from wherever this interpreter found it.
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
    cpu = int(SUBPROCESS_TIMEOUT)
    argv = [sys.executable, "-c", _WORKER, kind, chunkname, str(memory), str(budget), str(cpu)]
    try:
        proc = subprocess.run(argv, input=src, capture_output=True, timeout=SUBPROCESS_TIMEOUT, env=env, check=False)
    except subprocess.TimeoutExpired:
        return False, f"the Lua sandbox took longer than {SUBPROCESS_TIMEOUT:.0f} s"
    except OSError as exc:
        return False, f"could not start the Lua sandbox process: {exc}"
    out = proc.stdout
    if proc.returncode != 0 or out[:2] not in (b"OK", b"ER"):
        tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        return False, f"the Lua sandbox process failed (memory or CPU limit?): {tail[0]}"
    return out[:2] == b"OK", out[2:]


def decode_tagged(buf: bytes) -> Any:
    """Decode the sandbox's tagged text (see _RUNNER's ``enc``) into our model, iteratively."""
    pos = 0
    end = len(buf)
    stack: list = []  # (table, pending key or _NOKEY)
    table: dict | None = None
    key: Any = _NOKEY
    result: Any = None
    while True:
        tag = buf[pos]
        if tag == 0x73:  # s<len>:<bytes>
            colon = buf.index(b":", pos)
            start = colon + 1
            stop = start + int(buf[pos + 1 : colon])
            v = buf[start:stop].decode("utf-8", "surrogateescape")
            pos = stop
        elif tag == 0x69:  # i<int>;
            semi = buf.index(b";", pos)
            v = int(buf[pos + 1 : semi])
            pos = semi + 1
        elif tag == 0x64:  # d<%.17g>;
            semi = buf.index(b";", pos)
            v = float(buf[pos + 1 : semi])
            pos = semi + 1
        elif tag == 0x7B:  # {
            stack.append((table, key))
            table, key = {}, _NOKEY
            pos += 1
            continue
        elif tag == 0x7D:  # }
            v = table
            table, key = stack.pop()
            pos += 1
        else:
            v = _SCALARS[tag]
            pos += 1
        if table is None:
            result = v
            break
        if key is _NOKEY:
            key = BoolKey(v) if v is True or v is False else v
        else:
            table[key] = v
            key = _NOKEY
    if pos != end:
        raise ValueError("trailing data")
    return result


_NOKEY = object()
_SCALARS = {0x4E: None, 0x54: True, 0x46: False, 0x6E: float("nan")}
