# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Lua's error messages about an untrusted file, told without quoting the file's contents.

A syntax error says ``near '<token>'`` and a runtime error may quote a string constant: in a
data file or a migrator config that text can be a password or a hash. describe() keeps the line
number and Lua's own wording (names, keywords, symbols) and masks everything else.
"""

from __future__ import annotations

import functools
import re

_COMPILE, _RUN = "\x01C", "\x01R"  # the sandbox's marks: Lua could not compile / run the file
# What a syntax error may say after "near": Lua's own tokens, never a string, number or name.
_SAFE_NEAR = re.compile(
    r"\A(?:<eof>|'(?:and|break|do|else|elseif|end|false|for|function|goto|if|in|local|nil|not|or|repeat"
    r"|return|then|true|until|while|[-+*/%^#&~|<>=(){}\[\];:,.]{1,3})')\Z"
)
_NEAR = re.compile(r" near (.*)\Z", re.DOTALL)
# Runtime errors worth showing: Lua's own descriptions, which quote names, never values (but
# "(constant '...')", which is cut off below). Anything else (error("..."), a table) is hidden:
# the file's own code can make any text.
_RUNTIME = re.compile(
    r"\A(?:attempt to |bad argument #|stack overflow|'for' |number has no integer representation"
    r"|string length overflow|resulting string too large|table index is |wrong number of arguments)"
)
_QUOTED = re.compile(r"'([^']*)'")
LUA_NAME = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]{0,63}\Z")
_SYMBOL = re.compile(r"\A(?:<\w+>|[-+*/%^#&~|<>=(){}\[\];:,.]{1,3})\Z")  # a token Lua names: '=', '<eof>'
# Messages of the sandbox's own code, raised in the file's run without a position: exact texts,
# since the file could raise a message starting like one of them.
_TRUSTED_RUN = re.compile(
    r"\A(?:instruction limit exceeded \(endless loop\?\)|not enough memory|a table contains itself \(cycle\)"
    r"|tables nested deeper than \d+ levels|a (?:function|userdata|thread) cannot be stored as data"
    r"|a (?:function|userdata|thread|nil) used as a table key is not supported)\Z"
)
_HIDDEN = "the file raised an error (its message is not shown, as it may hold a secret)"


@functools.cache
def _positioned(chunk: str) -> re.Pattern[str]:
    """Lua's ``<chunk>:<line>: <message>`` for a chunk loaded under that name."""
    return re.compile(r"\A" + re.escape(chunk) + r":(\d+): (.*)\Z", re.DOTALL)


def describe(reason: str, chunk: str, keep_names: bool = True) -> str:
    """Lua's message with its line number, stripped of anything that could quote the file's strings."""
    if reason.startswith(_COMPILE):
        return _describe_syntax(reason[len(_COMPILE) :], chunk, keep_names)
    if reason.startswith(_RUN):
        return _describe_runtime(reason[len(_RUN) :], chunk, keep_names)
    return f"the file cannot be run: {reason}"  # the sandbox's own trouble (no lupa, a limit)


def _describe_syntax(reason: str, chunk: str, keep_names: bool) -> str:
    """A compile error: the parser's text (names, tokens) and its line; the token only when it is no value."""
    match = _positioned(chunk).match(reason)
    if not match:
        return f"the file cannot be compiled: {reason}"  # "not enough memory": no text of the file
    line, message = match[1], match[2]
    near = _NEAR.search(message)
    text = message[: near.start()] if near else message
    token = f" near {near[1]}" if near and _SAFE_NEAR.match(near[1]) else ""
    return f"line {line}: syntax error: {_mask_quotes(text, keep_names)}{token}"


def _describe_runtime(reason: str, chunk: str, keep_names: bool) -> str:
    match = _positioned(chunk).match(reason)
    if not match:
        return f"the file cannot be run: {reason}" if _TRUSTED_RUN.match(reason) else _HIDDEN
    line, message = match[1], match[2]
    if not _RUNTIME.match(message):
        return f"line {line}: {_HIDDEN}"
    constant = message.find("(constant '")
    if constant >= 0:  # Lua quotes the string itself: drop it and whatever follows
        message = message[:constant] + "(a string constant)"
    return f"line {line}: error while running the file: {_mask_quotes(message, keep_names)}"


def _mask_quotes(message: str, keep_names: bool) -> str:
    """Keep quoted tokens (``'='``) and, in a config, names (``global 'os'``); mask other quoted text.

    In a data file a bare word is no code anyone wrote on purpose: it may be a secret typed
    without quotes, so names are masked there too.
    """

    def keep(text: str) -> bool:
        return bool(_SYMBOL.match(text) or (keep_names and LUA_NAME.match(text)))

    return _QUOTED.sub(lambda m: m[0] if keep(m[1]) else "'...'", message)
