# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Strict equality of values in the luadata model, the one test of "same data" the engine uses.

Python's ``==`` is too loose for Lua data: ``1 == 1.0 == True`` and ``0.0 == -0.0``, while Lua
(and Prosody's serializer) keep an integer, a float and a boolean apart and write ``-0.0`` as
itself. It is also too strict once: ``nan != nan``, though a NaN read back is the same data.

Stanzas compare as XML: name, namespace, attributes and children, where a missing ``xmlns``
means the parent's (as util.stanza's ``get_child`` reads it), adjacent text nodes count as one
and empty ones as none. Prosody's XML parser (SQL storage) hands a stanza back with ``xmlns`` on
every element and the text between two tags as one node, so a stanza stored in a file is the
same stanza after a trip through SQL and must not be rewritten on every run.
"""

from __future__ import annotations

import math
from typing import Any

from .backends.base import ArchiveItem
from .stanza import Element

_SCALARS = (type(None), bool, int, str)


def _same_float(a: float, b: float) -> bool:
    a_nan, b_nan = math.isnan(a), math.isnan(b)
    if a_nan or b_nan:  # NaN equals NaN, whatever its payload
        return a_nan and b_nan
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)


def _key_set(table: dict[Any, Any]) -> set[tuple[type, Any]]:
    # Keys compare as Lua stores them: an integral float key is the integer key, and a type tag
    # keeps 1 apart from a string or BoolKey. A nil field is no field in a Lua table, so it is
    # left out.
    return {_lua_key(k) for k, v in table.items() if v is not None}


def _lua_key(key: Any) -> tuple[type, Any]:
    """A key as Lua stores it, tagged with its type: a float with an integral value is an integer."""
    if type(key) is float and key.is_integer():  # pylint: disable=unidiomatic-typecheck  # exact, like the type tag
        return int, int(key)
    return type(key), key


def _children(element: Element) -> list[Any]:
    """An element's children with adjacent text joined and empty text left out."""
    out: list[Any] = []
    for child in element.children:
        if isinstance(child, str):
            if not child:
                continue
            if out and isinstance(out[-1], str):
                out[-1] += child
                continue
        out.append(child)
    return out


def _same_element(a: Element, b: Element) -> bool:
    stack: list[tuple[Element, Element, Any, Any]] = [(a, b, None, None)]
    while stack:
        x, y, x_ns, y_ns = stack.pop()
        x_ns, y_ns = x.attr.get("xmlns", x_ns), y.attr.get("xmlns", y_ns)
        if x.name != y.name or x_ns != y_ns or _plain_attr(x) != _plain_attr(y):
            return False
        x_children, y_children = _children(x), _children(y)
        if len(x_children) != len(y_children):
            return False
        for p, q in zip(x_children, y_children):
            if isinstance(p, Element) and isinstance(q, Element):
                stack.append((p, q, x_ns, y_ns))
            elif isinstance(p, Element) or isinstance(q, Element) or p != q:
                return False
    return True


def _plain_attr(element: Element) -> dict[str, Any]:
    return {k: v for k, v in element.attr.items() if k != "xmlns"}


def same_value(a: Any, b: Any) -> bool:
    """Whether two values are the same Lua data (see the module notes)."""
    stack = [(a, b)]
    while stack:
        x, y = stack.pop()
        if type(x) is not type(y):
            return False
        if isinstance(x, float):
            if not _same_float(x, y):
                return False
        elif isinstance(x, _SCALARS):
            if x != y:
                return False
        elif isinstance(x, dict):
            if _key_set(x) != _key_set(y):
                return False
            stack.extend((v, y[k]) for k, v in x.items() if v is not None)
        elif isinstance(x, (list, tuple)):
            if len(x) != len(y):
                return False
            stack.extend(zip(x, y))
        elif isinstance(x, Element):
            if not _same_element(x, y):
                return False
        elif isinstance(x, ArchiveItem):
            stack.extend(((x.key, y.key), (x.value, y.value), (x.when, y.when), (x.with_, y.with_)))
        elif x != y:
            return False
    return True


def same_item(a: ArchiveItem, b: ArchiveItem) -> bool:
    """Whether two archive items hold the same key, stanza, time and peer."""
    return same_value(a, b)
