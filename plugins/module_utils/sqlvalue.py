# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""How Prosody's SQL storage (mod_storage_sql) types values and lays out keyval rows.

Each value is a (``type``, ``value``) pair of text columns: ``string`` (the text itself),
``number`` (Lua's ``tostring``, read with ``tonumber``), ``boolean`` (``true``/``false``),
``json`` (tables, see prosody_json) and ``xml`` (stanzas, ``tostring`` and util.xml). A stanza
holding what XML cannot carry (a control character, bytes that are not UTF-8) raises EncodeError:
Prosody's ``tostring`` would write it raw and its parser then refuse the row.

Numbers are written so that Lua's ``tonumber`` gives back exactly the value held, where Prosody
loses some: floats as Python's shortest round-trip text (Prosody's ``%.14g`` keeps 14 digits,
so ``1/3`` comes back as ``0.33333333333333``), infinities as ``1e999``/``-1e999`` (Prosody
writes ``inf``, which ``tonumber`` refuses, so Prosody cannot read the row back). NaN has no
text ``tonumber`` reads, so writing it raises EncodeError rather than leave a row that makes
Prosody's read of the whole store fail. Reading gives what ``tonumber`` gives (``1`` an
integer, ``1.0``/``1e+15`` floats, hexadecimal, surrounding spaces), and additionally reads the
``inf``, ``-inf``, ``nan``, ``-nan`` Prosody writes as the floats they stand for.

A keyval value (keyval_store_set/get) is one row per non-empty string key, plus one row with
key ``''`` holding a JSON table of every other key (the empty string included). An empty table
or None is no rows at all, and no rows read back as None, as in Prosody. Where we keep more
than Prosody does:

* A string key whose value is ``false`` is a ``boolean``/``false`` row, as Prosody writes it;
  Prosody's reader drops such rows, ours keeps the ``false``.
* A value that is not a table (a string, number, boolean, even top-level ``false``) is written
  as a single row with key ``''`` and its own type, and read back as that value. Prosody cannot
  store such a value in SQL (its writer raises, or deletes the rows for ``false``) and reads the
  row as an empty table.
* A row Prosody cannot read (a number it refuses, JSON its decoder rejects) fails Prosody's
  whole read; ours reads the inf/nan it wrote and raises a DecodeError naming the row otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from . import prosody_json
from .errors import DecodeError, EncodeError
from .stanza import Element, xml_text_problem


class SqlValueError(DecodeError):
    """A stored (type, value) pair that Prosody's deserialize would not read."""


def _excerpt(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:40] + "...")


def to_sql(value: Any) -> tuple[str, str]:
    """The (type, text) pair for a value; Prosody's ``deserialize`` reads back exactly ``value``."""
    if value is True or value is False:
        return "boolean", "true" if value else "false"
    if isinstance(value, (int, float)):
        return "number", prosody_json.number_text(value)
    if isinstance(value, str):
        try:
            value.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError as exc:
            raise EncodeError(f"string {_excerpt(value)} holds a character that is not a byte: {exc.reason}") from None
        return "string", value
    if isinstance(value, Element):
        text = value.to_xml()
        problem = xml_text_problem(text)
        if problem:
            # Prosody's parser refuses such text, so the row would be unreadable: refuse it here.
            raise EncodeError(f"the stanza {problem}, so it has no XML form Prosody can read back")
        return "xml", text
    if isinstance(value, dict):
        return "json", prosody_json.encode(value)
    if value is None:
        raise EncodeError("nil cannot be stored as an SQL value")
    raise EncodeError(f"a {type(value).__name__} is not a value Prosody's SQL storage can hold")


def from_sql(type_: str, text: str, source: str) -> Any:
    """The value Prosody's ``deserialize`` reads from a (type, text) pair (inf/nan recovered)."""
    if type_ == "string":
        return text
    if type_ == "boolean":
        if text in ("true", "false"):
            return text == "true"
        raise SqlValueError(f"invalid boolean {_excerpt(text)}", source)
    if type_ == "number":
        number = prosody_json.PROSODY_NONFINITE.get(text)
        if number is None:
            number = prosody_json.lua_tonumber(text)
        if number is None:
            raise SqlValueError(f"invalid number {_excerpt(text)}", source)
        return number
    if type_ == "json":
        return prosody_json.decode(text, source)
    if type_ == "xml":
        return Element.from_xml(text, source)
    raise SqlValueError(f"unknown value type {_excerpt(type_)}", source)


def keyval_to_rows(value: Any) -> list[tuple[str, str, str]]:
    """The (key, type, text) rows that hold one keyval value (none for None or ``{}``)."""
    if value is None:
        return []
    if not isinstance(value, dict):
        return [("", *to_sql(value))]
    rows: list[tuple[str, str, str]] = []
    extra: dict[Any, Any] = {}
    for key, item in value.items():
        if item is None:
            continue
        if isinstance(key, str) and key != "":
            rows.append((key, *to_sql(item)))
        else:
            extra[key] = item
    if extra:
        rows.append(("", "json", prosody_json.encode(extra)))
    return rows


def keyval_from_rows(rows: Iterable[tuple[str, str, str]], source: str) -> Any:
    """One keyval value from its rows, in the order given, as Prosody's keyval_store_get reads it."""
    result: dict[Any, Any] = {}
    count = 0
    lone: Any = None
    for key, type_, text in rows:
        count += 1
        item = from_sql(type_, text, f"{source}, key {key!r}")
        if key != "":
            result[key] = item
        elif isinstance(item, dict):
            result.update(item)
        else:
            lone = item
    if count == 0:
        return None
    # Our writer puts a non-table value alone in the '' row; Prosody ignores such a row.
    if count == 1 and lone is not None:
        return lone
    return result
