"""Real Prosody as a test oracle: run Lua with Prosody's own sources and compare data canonically.

The canonical form is defined in lua/canon.lua; canon() below builds the same bytes from our
Python model of Lua values, so a test can compare what real Prosody holds with what we hold
without trusting either side's serializer.
"""

from __future__ import annotations

import math
import os
import shutil
import struct
import subprocess
import tempfile

from ansible_collections.xmpp.prosody.plugins.module_utils.luadata import BoolKey

PROSODY_SRC = os.environ.get("PROSODY_SRC", "/usr/lib/prosody")
LUA = os.environ.get("PROSODY_LUA", "lua5.4")
HERE = os.path.dirname(os.path.abspath(__file__))

PRELUDE = f"""
package.path = {PROSODY_SRC + "/?.lua"!r} .. ";" .. {HERE + "/lua/?.lua"!r} .. ";" .. package.path
package.cpath = {PROSODY_SRC + "/?.so"!r} .. ";" .. package.cpath
local canon = require "canon"
"""


class OracleMissing(RuntimeError):
    """Prosody or Lua is not installed; `make test` installs them."""


def require_prosody() -> None:
    """Fail (never skip) when the oracle is missing: a silent skip would hide untested code."""
    if not shutil.which(LUA) or not os.path.isfile(os.path.join(PROSODY_SRC, "util", "serialization.lua")):
        raise OracleMissing(f"{LUA} and Prosody under {PROSODY_SRC} are required: run `make test-deps`")


def run_lua(script: str, stdin: bytes = b"", timeout: float = 120) -> bytes:
    """Run a Lua chunk with Prosody's sources on the path (``canon`` is in scope); return stdout."""
    require_prosody()
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False, encoding="utf-8") as f:
        f.write(PRELUDE + script)
        path = f.name
    try:
        proc = subprocess.run([LUA, path], input=stdin, capture_output=True, timeout=timeout, check=False)
    finally:
        os.unlink(path)
    if proc.returncode != 0:
        raise AssertionError(f"Lua failed ({proc.returncode}): {proc.stderr.decode('utf-8', 'replace')}")
    return proc.stdout


def canon(value: object) -> bytes:
    """Canonical bytes for a value of our Lua model (see lua/canon.lua for the grammar)."""
    if value is None:
        return b"N"
    if isinstance(value, BoolKey):
        value = value.value
    if value is True:
        return b"T"
    if value is False:
        return b"F"
    if isinstance(value, int):
        return b"i%d;" % value
    if isinstance(value, float):
        if math.isnan(value):
            return b"fnan;"
        return b"f" + struct.pack(">d", value).hex().encode() + b";"
    if isinstance(value, str):
        raw = value.encode("utf-8", "surrogateescape")
        return b"s%d:" % len(raw) + raw
    if isinstance(value, dict):
        items = sorted((canon(k), canon(v)) for k, v in value.items())
        return b"t%d{" % len(items) + b"".join(k + v for k, v in items) + b"}"
    raise TypeError(f"not a Lua value: {type(value).__name__}")


def frames(data: bytes) -> list[bytes]:
    """Split the ``<length>:<bytes>`` frames the Lua side writes."""
    result, index = [], 0
    while index < len(data):
        colon = data.index(b":", index)
        size = int(data[index:colon])
        result.append(data[colon + 1 : colon + 1 + size])
        index = colon + 1 + size
    return result


# One Lua process serves every example: handlers[name](input, out) per request, where input is
# the canon-decoded batch and out(bytes) writes one reply frame.
SERVER_LOOP = """
local function serve()
    while true do
        local header = io.read("l")
        if not header then return end
        local name, size = header:match("^(%S+) (%d+)$")
        local input = canon.decode(io.read(tonumber(size)))
        local chunks = {}
        local ok, err = pcall(handlers[name], input, function(s) chunks[#chunks + 1] = #s .. ":" .. s end)
        local reply = ok and table.concat(chunks) or ("!" .. tostring(err))
        io.write(#reply, "\\n", reply)
        io.flush()
    end
end
serve()
"""


class LuaSession:
    """A long-running Lua 5.4 with Prosody's sources, answering batches of values."""

    def __init__(self, script: str) -> None:
        require_prosody()
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False, encoding="utf-8") as f:
            f.write(PRELUDE + script + SERVER_LOOP)
            self.path = f.name
        self.proc = subprocess.Popen([LUA, self.path], stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def call(self, name: str, items: list[object]) -> list[bytes]:
        payload = canon(dict(enumerate(items, 1)))
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{name} {len(payload)}\n".encode() + payload)
        self.proc.stdin.flush()
        header = self.proc.stdout.readline()
        assert header, "the Lua oracle exited"
        reply = self.proc.stdout.read(int(header))
        assert not reply.startswith(b"!"), reply.decode("utf-8", "replace")
        return frames(reply)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
        os.unlink(self.path)


def collections_path() -> str:
    """The directory holding ``ansible_collections/`` as this run imports it, for child processes."""
    from ansible_collections.xmpp.prosody.plugins.module_utils import errors

    # <root>/ansible_collections/xmpp/prosody/plugins/module_utils/errors.py; no resolve(): the
    # collection may be a symlink whose target is not under an ansible_collections directory.
    return os.path.abspath(os.path.join(os.path.dirname(errors.__file__), *[".."] * 5))
