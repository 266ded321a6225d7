#!/usr/bin/python
# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The xmpp.prosody.prosody_migrate module: the copy engine, driven by Ansible."""
# ruff: noqa: E402 (an Ansible module's imports follow its DOCUMENTATION, EXAMPLES and RETURN)

from __future__ import annotations

DOCUMENTATION = r"""
module: prosody_migrate
short_description: Move a Prosody XMPP server's data between storage backends
version_added: 0.1.0
description:
  - Copies a L(Prosody,https://prosody.im) server's data (accounts, rosters, vCards, private XML, blocklists,
    message archives, MUC rooms and logs, PEP and pubsub) from one storage backend to another, as Prosody's own
    C(prosody-migrator) does, and reads the same C(migrator.cfg.lua).
  - The backends are Prosody's internal file store (C(type=internal)) and its SQL store (C(type=sql)) on SQLite3,
    PostgreSQL or MySQL/MariaDB.
  - The run compares with the destination first and writes only what differs, so running the task again reports
    no change. Values are replaced as a whole, archive items are replaced by their key, and users who exist only
    in the destination are left alone.
  - Data that is absent or empty in the source is nothing to migrate; the destination's value is kept.
  - Hosts and stores are taken from the source's O(source.hosts) table (or the config entry's C(hosts)), or
    discovered in the source when it names none; the result's RV(discovered) tells what was found.
  - Passwords and account secrets never appear in the result; failure messages are scrubbed of them and the
    diff masks every secret-looking field.
author:
  - xmpp.prosody contributors (!UNKNOWN)
requirements:
  - Python 3.9 or newer on the managed host.
  - lupa (the Lua sandbox), for a config file and for stores of type C(internal).
  - psycopg 3, for stores on PostgreSQL.
  - PyMySQL, for stores on MySQL or MariaDB.
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: Reads both sides and computes every result, including the diff, and writes nothing (the state file
      of O(skip_unchanged) is only read).
  diff_mode:
    support: full
    details: One diff per host, store and user that changes; account secrets are masked.
  platform:
    platforms: posix
options:
  config:
    description:
      - Path on the managed host of the C(migrator.cfg.lua) that defines the stores, as Prosody's migrator reads it.
      - Used when O(source) and O(destination) are not given.
    type: path
    default: /etc/prosody/migrator.cfg.lua
  from:
    description:
      - The name of the store, defined in O(config), to copy from.
    type: str
    default: input
  to:
    description:
      - The name of the store, defined in O(config), to copy to. It must differ from O(from).
    type: str
    default: output
  source:
    description:
      - The store to copy from, given inline with the fields a C(migrator.cfg.lua) entry has.
      - Mutually exclusive with O(config); requires O(destination).
    type: dict
    suboptions:
      type:
        description:
          - The storage backend. C(prosody_files) and C(prosody_sql) are the legacy names of C(internal) and C(sql).
        type: str
        required: true
        choices: [internal, sql, prosody_files, prosody_sql]
      path:
        description:
          - For C(type=internal), the data directory (Prosody's C(data_path)).
        type: path
      driver:
        description:
          - For C(type=sql), the database driver.
        type: str
        choices: [SQLite3, PostgreSQL, MySQL]
        default: SQLite3
      database:
        description:
          - For C(type=sql), the database name; for SQLite3 the database file, best given as an absolute path.
        type: str
      username:
        description:
          - For C(type=sql), the database user.
        type: str
      password:
        description:
          - For C(type=sql), the database user's password. It is never shown in the result.
        type: str
      host:
        description:
          - For C(type=sql), the database server's host name or address.
        type: str
      port:
        description:
          - For C(type=sql), the database server's port.
        type: int
      hosts:
        description:
          - The XMPP hosts to migrate and their stores, as the C(hosts) table of a C(migrator.cfg.lua) entry
            gives them, here a mapping of host name to a list of store entries (see the examples).
          - A store entry is C(name) (a key-value store), C(name-archive) or C(name-pubsub).
          - A host mapped to an empty list, or a plain list of host names, has its stores discovered.
          - When not given, the hosts and their stores are discovered in the source.
        type: raw
  destination:
    description:
      - The store to copy to, given inline with the fields a C(migrator.cfg.lua) entry has.
      - Mutually exclusive with O(config); requires O(source).
      - A file store's data directory and an SQLite3 database are created when missing; a PostgreSQL or MySQL
        database must exist (its tables are created, with Prosody's indexes).
    type: dict
    suboptions:
      type:
        description:
          - The storage backend. C(prosody_files) and C(prosody_sql) are the legacy names of C(internal) and C(sql).
        type: str
        required: true
        choices: [internal, sql, prosody_files, prosody_sql]
      path:
        description:
          - For C(type=internal), the data directory (Prosody's C(data_path)).
        type: path
      driver:
        description:
          - For C(type=sql), the database driver.
        type: str
        choices: [SQLite3, PostgreSQL, MySQL]
        default: SQLite3
      database:
        description:
          - For C(type=sql), the database name; for SQLite3 the database file, best given as an absolute path.
        type: str
      username:
        description:
          - For C(type=sql), the database user.
        type: str
      password:
        description:
          - For C(type=sql), the database user's password. It is never shown in the result.
        type: str
      host:
        description:
          - For C(type=sql), the database server's host name or address.
        type: str
      port:
        description:
          - For C(type=sql), the database server's port.
        type: int
  hosts:
    description:
      - Migrate only these XMPP hosts (of those the source names or holds). An unknown name is an error.
      - When not given or empty, every host.
    type: list
    elements: str
  stores:
    description:
      - Migrate only these stores, named as C(roster) or by their entry, as C(archive-archive). An unknown name
        is an error.
      - When not given or empty, every store.
    type: list
    elements: str
  keep_going:
    description:
      - When a user, store or host cannot be migrated, record the failure and go on with the rest.
      - The task fails at the end all the same, listing every failure in RV(failures).
      - When V(false), the run stops at the first failure; what was written before it stays written.
    type: bool
    default: false
  verify:
    description:
      - After the copy, read the destination back and compare it with the source; RV(verified) tells the outcome
        and RV(mismatches) lists the differences, which fail the task.
      - In check mode the destination is compared as it is.
    type: bool
    default: false
  jobs:
    description:
      - How many worker processes share the users of each store, each with its own connection to the databases.
      - When not given, one per CPU core of the managed host, at most 4.
      - V(1) runs everything in the module's own process. With diff mode the run always uses one process, so
        that the diff lists the changes in order.
      - Into SQL, each process keeps its batch (up to 2,000 rows or 500 entries) and writes it in one short
        transaction at the batch's end. An entry the database refuses there fails alone, and without
        O(keep_going) the run stops at the end of that batch rather than at the entry.
    type: int
  skip_unchanged:
    description:
      - Skip, without reading them, the entries (one user's value or archive, or a host's own data) that neither
        side has changed since a run found them equal or wrote them, as O(state_file) records. They are reported
        unchanged, as a compare would report them, so that a run over an unchanged destination is quick.
      - A change is told by the file's identity, size and times in a file store, and by a digest of every row of
        the entry, computed by the database server (on SQLite3 by the module), in a SQL store.
      - V(false) compares every entry and uses no state file. O(verify) reads everything back all the same.
    type: bool
    default: true
  state_file:
    description:
      - The file on the managed host, an SQLite database, that records the entries found equal, for
        O(skip_unchanged). It is created when missing, with its directory; check mode only reads it.
      - When not given, C(xmpp-prosody/<digest>.sqlite) under C($XDG_STATE_HOME) (C(~/.local/state) when unset)
        of the user the module runs as, the digest naming the source and destination.
      - A state file of another source, destination or version of this collection is emptied and used anew.
        One that cannot be used (unreadable, not writable, not a state file) gives a warning and a run that
        compares every entry, never a failure. Removing the file makes the next run compare every entry.
    type: path
notes:
  - Stop Prosody, or at least keep it from writing to the source, while the data is migrated.
  - The module runs on the managed host; the paths and database servers are as that host sees them.
  - When several hosts are migrated one by one (in a loop), each run reports the stores of its own hosts.
seealso:
  - name: prosody-migrator
    description: Prosody's own migrator, whose configuration file this module reads.
    link: https://prosody.im/doc/migrator
"""

EXAMPLES = r"""
- name: Move the file store to PostgreSQL, with the stores defined in the migrator's config file
  xmpp.prosody.prosody_migrate:
    config: /etc/prosody/migrator.cfg.lua
    from: input
    to: output

- name: Move the file store to PostgreSQL
  xmpp.prosody.prosody_migrate:
    source:
      type: internal
      path: /var/lib/prosody
    destination:
      type: sql
      driver: PostgreSQL
      database: prosody
      host: db.example.org
      username: prosody
      password: "{{ vault_prosody_db_password }}"
    verify: true

- name: Move the file store to MySQL/MariaDB, going on past data that cannot be read
  xmpp.prosody.prosody_migrate:
    source:
      type: internal
      path: /var/lib/prosody
    destination:
      type: sql
      driver: MySQL
      database: prosody
      host: 127.0.0.1
      port: 3306
      username: prosody
      password: "{{ vault_prosody_db_password }}"
    keep_going: true
  register: migration

- name: Move SQLite3 back to files, for two stores of one host only
  xmpp.prosody.prosody_migrate:
    source:
      type: sql
      driver: SQLite3
      database: /var/lib/prosody/prosody.sqlite
      hosts:
        example.org:
          - accounts
          - roster
    destination:
      type: internal
      path: /srv/prosody-data

- name: Dry run, showing what would change (run with --check --diff, or set them on the task)
  xmpp.prosody.prosody_migrate:
    source:
      type: internal
      path: /var/lib/prosody
    destination:
      type: sql
      driver: SQLite3
      database: /var/lib/prosody/prosody.sqlite
  check_mode: true
  diff: true
  register: preview

- name: Migrate the virtual hosts one at a time
  xmpp.prosody.prosody_migrate:
    config: /etc/prosody/migrator.cfg.lua
    hosts:
      - "{{ item }}"
  loop:
    - example.org
    - conference.example.org
    - chat.example.net
"""

RETURN = r"""
msg:
  description: A one-line summary of the run, or what failed.
  returned: always
  type: str
  sample: "migrated 'input' (internal) to 'output' (sql): 12 created, 0 updated, 3 unchanged, 0 failed"
stores:
  description: One entry per host and store, in the order they were migrated.
  returned: always
  type: list
  elements: dict
  contains:
    host:
      description: The XMPP host.
      type: str
      sample: example.org
    store:
      description: The store's name. The items of each pubsub or PEP node are reported as a store of their own.
      type: str
      sample: roster
    type:
      description: V(keyval) or V(archive).
      type: str
      sample: keyval
    users_created:
      description: Entries (one user's value or archive; the host-level one counts as one) the destination lacked.
      type: int
    users_updated:
      description: Entries the destination held with a different value or different items.
      type: int
    users_unchanged:
      description:
        - Entries the destination already held as the source does (or the source holds empty), including
          those skipped as unchanged since an earlier run (O(skip_unchanged)).
      type: int
    users_failed:
      description: Entries that could not be migrated.
      type: int
    items_created:
      description: Archive items the destination lacked (0 for key-value stores).
      type: int
    items_updated:
      description: Archive items the destination held under the same key with different content.
      type: int
    items_unchanged:
      description: Archive items the destination already held (a skipped archive's items as last counted).
      type: int
    items_failed:
      description: Archive items that could not be written.
      type: int
  sample:
    - host: example.org
      store: roster
      type: keyval
      users_created: 5
      users_updated: 0
      users_unchanged: 0
      users_failed: 0
      items_created: 0
      items_updated: 0
      items_unchanged: 0
      items_failed: 0
totals:
  description: The counts of RV(stores) summed over every host and store.
  returned: always
  type: dict
  sample:
    users_created: 42
    users_updated: 0
    users_unchanged: 0
    users_failed: 0
    items_created: 120
    items_updated: 0
    items_unchanged: 0
    items_failed: 0
failures:
  description: What could not be migrated, each with the reason.
  returned: always
  type: list
  elements: dict
  contains:
    host:
      description: The XMPP host.
      type: str
    store:
      description: The store.
      type: str
    user:
      description: The user, or V(null) for host-level data or a whole store.
      type: str
    scope:
      description: V(user), V(host) (host-level data) or V(store) (the store could not be listed).
      type: str
    reason:
      description: Why, naming the file or row at fault; secrets are masked.
      type: str
  sample:
    - host: example.org
      store: roster
      user: alice
      scope: user
      reason: "/var/lib/prosody/example%2eorg/roster/alice.dat: not a Lua data file"
stopped:
  description: Whether the run stopped at its first failure (O(keep_going) being V(false)).
  returned: always
  type: bool
discovered:
  description:
    - The stores found in the source, per host, for the hosts whose stores were not named.
    - Each is written as a C(migrator.cfg.lua) store entry, C(name) or C(name-archive).
  returned: always
  type: dict
  sample:
    example.org: [accounts, archive-archive, roster, vcard]
verified:
  description: Whether the destination holds what the source holds, read back after the copy.
  returned: when O(verify=true)
  type: bool
mismatches:
  description: The differences the verification found, shaped as RV(failures).
  returned: when O(verify=true)
  type: list
  elements: dict
diff:
  description:
    - In diff mode, one entry per host, store and user that changes, as Ansible shows diffs.
    - A key-value entry shows the destination's value before and the source's value after, as JSON, with
      secret-looking fields masked; an archive entry the count of items added and replaced.
  returned: when diff mode is on
  type: list
  elements: dict
  contains:
    before_header:
      description: Which entry, as the destination held it.
      type: str
      sample: "example.org roster alice (destination)"
    after_header:
      description: Which entry, as the source holds it.
      type: str
      sample: "example.org roster alice (source)"
    before:
      description: The destination's value (empty when the entry is created).
      type: str
    after:
      description: The value the entry gets.
      type: str
"""

import json
import traceback
from typing import Any, Optional

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

# AnsiballZ ships only the module_utils imported by name; open_backend loads the backends by name
# at run time, so they are imported here for the packaging to see them.
from ansible_collections.xmpp.prosody.plugins.module_utils.backends import backend_params
from ansible_collections.xmpp.prosody.plugins.module_utils.backends import internal as _internal  # noqa: F401
from ansible_collections.xmpp.prosody.plugins.module_utils.backends import sql as _sql  # noqa: F401
from ansible_collections.xmpp.prosody.plugins.module_utils.backends import xep0227 as _xep0227  # noqa: F401
from ansible_collections.xmpp.prosody.plugins.module_utils.config import load_config, store_definition
from ansible_collections.xmpp.prosody.plugins.module_utils.engine import Options, run_migration
from ansible_collections.xmpp.prosody.plugins.module_utils.errors import ProsodyMigrateError
from ansible_collections.xmpp.prosody.plugins.module_utils.parallel import default_jobs
from ansible_collections.xmpp.prosody.plugins.module_utils.plan import ConfigError
from ansible_collections.xmpp.prosody.plugins.module_utils.report import Report, Scrubber, find_secrets
from ansible_collections.xmpp.prosody.plugins.module_utils.state import default_path

# The third-party libraries, by the name pip knows them: which stores need them is decided per run.
LIBRARIES: dict[str, Optional[str]] = {}
try:
    import lupa  # noqa: F401  # pylint: disable=unused-import
except ImportError:
    LIBRARIES["lupa"] = traceback.format_exc()
try:
    import psycopg  # noqa: F401  # pylint: disable=unused-import
except ImportError:
    LIBRARIES["psycopg"] = traceback.format_exc()
try:
    import pymysql  # noqa: F401  # pylint: disable=unused-import
except ImportError:
    LIBRARIES["PyMySQL"] = traceback.format_exc()

_SQL_LIBRARIES = {"PostgreSQL": "psycopg", "MySQL": "PyMySQL"}
_STORE_FIELDS = ("type", "path", "driver", "database", "username", "password", "host", "port")
_SHOWN_FAILURES = 3  # the message names this many; RV(failures) has them all


def _store_spec(with_hosts: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "type": {"type": "str", "required": True, "choices": ["internal", "sql", "prosody_files", "prosody_sql"]},
        "path": {"type": "path"},
        "driver": {"type": "str", "choices": ["SQLite3", "PostgreSQL", "MySQL"], "default": "SQLite3"},
        "database": {"type": "str"},
        "username": {"type": "str"},
        "password": {"type": "str", "no_log": True},
        "host": {"type": "str"},
        "port": {"type": "int"},
    }
    if with_hosts:
        spec["hosts"] = {"type": "raw"}
    return spec


def argument_spec() -> dict[str, Any]:
    return {
        "config": {"type": "path", "default": "/etc/prosody/migrator.cfg.lua"},
        "from": {"type": "str", "default": "input"},
        "to": {"type": "str", "default": "output"},
        "source": {"type": "dict", "options": _store_spec(True)},
        "destination": {"type": "dict", "options": _store_spec(False)},
        "hosts": {"type": "list", "elements": "str"},
        "stores": {"type": "list", "elements": "str"},
        "keep_going": {"type": "bool", "default": False},
        "verify": {"type": "bool", "default": False},
        "jobs": {"type": "int"},
        "skip_unchanged": {"type": "bool", "default": True},
        "state_file": {"type": "path"},
    }


def build_module() -> AnsibleModule:
    return AnsibleModule(
        argument_spec=argument_spec(),
        mutually_exclusive=[
            ("config", "source"),
            ("config", "destination"),
            ("from", "source"),
            ("to", "destination"),
        ],
        required_together=[("source", "destination")],
        supports_check_mode=True,
    )


def _inline(params: Optional[dict[str, Any]]) -> dict[str, Any]:
    """A store given inline, as a config entry: the fields set, and only those."""
    definition = {k: v for k, v in (params or {}).items() if v is not None}
    if backend_params(definition).get("type") != "sql":
        definition.pop("driver", None)  # the default only means something for SQL stores
    return definition


def needed_libraries(*definitions: dict[str, Any]) -> list[str]:
    """The third-party libraries the stores need, by pip name."""
    needed = []
    for definition in definitions:
        params = backend_params(definition)
        if params.get("type") == "internal":
            needed.append("lupa")
        elif params.get("type") == "sql":
            library = _SQL_LIBRARIES.get(str(params.get("driver") or "SQLite3"))
            if library:
                needed.append(library)
    return list(dict.fromkeys(needed))


def _require(module: AnsibleModule, libraries: list[str], result: dict[str, Any]) -> None:
    for library in libraries:
        if library in LIBRARIES:
            module.fail_json(msg=missing_required_lib(library), exception=LIBRARIES[library], **result)


def _label(name: str, definition: dict[str, Any]) -> str:
    kind = str(definition.get("type", "?"))
    if kind == "sql" and definition.get("driver"):
        kind = f"sql, {definition['driver']}"
    return f"{name!r} ({kind})"


def _stores(module: AnsibleModule, scrub: Scrubber, result: dict[str, Any]) -> tuple[dict, dict, str, str]:
    """The source and destination definitions with their labels, from the config file or inline."""
    params = module.params
    if params["source"] is not None:
        source, destination = _inline(params["source"]), _inline(params["destination"])
        names = ("source", "destination")
    else:
        _require(module, ["lupa"], result)  # the config file is Lua, read in the sandbox
        path, names = params["config"], (params["from"], params["to"])
        config = load_config(path)
        for definition in config.values():
            find_secrets(definition, scrub.secrets)  # every password the file holds, used or not
        source, destination = (store_definition(config, name, path) for name in names)
        if names[0] == names[1]:
            raise ConfigError(f"'from' and 'to' name the same store {names[0]!r}")
    for definition in (source, destination):
        scrub.add(backend_params(definition).get("password"))
    return source, destination, _label(names[0], source), _label(names[1], destination)


def _scrubbed(value: Any, scrub: Scrubber) -> Any:
    """JSON-ready data with every string, keys included, scrubbed of the known secrets."""
    if isinstance(value, dict):
        return {_scrubbed(k, scrub): _scrubbed(v, scrub) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrubbed(v, scrub) for v in value]
    if isinstance(value, str):
        return scrub(value)
    return value


def _who(entry: dict[str, Any]) -> str:
    user = entry.get("user")
    return f"{entry['host']} {entry['store']} {'(host-level data)' if user is None else user}"


def ansible_diff(changes: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The engine's diff entries as Ansible's before/after diffs, one per host, store and user."""
    out = []
    for change in changes:
        who = _who(change)
        if change.get("type") == "archive":
            before = "" if change.get("action") == "create" else "archive (other items)\n"
            after = f"archive: {change.get('items_added', 0)} items added, {change.get('items_replaced', 0)} replaced\n"
        else:
            before = "" if change.get("before") is None else _json_text(change["before"])
            after = _json_text(change.get("after"))
        out.append(
            {
                "before_header": f"{who} (destination)",
                "after_header": f"{who} (source)",
                "before": before,
                "after": after,
            }
        )
    return out


def _json_text(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _failure_text(failure: dict[str, Any]) -> str:
    if failure.get("user") is not None:
        where = f"user {failure['user']}"
    elif failure.get("scope") == "store":
        where = "the whole store"
    else:
        where = "host-level data"
    return f"host {failure['host']}, store {failure['store']}, {where}: {failure['reason']}"


def _listed(entries: list[dict[str, Any]]) -> str:
    shown = "; ".join(_failure_text(f) for f in entries[:_SHOWN_FAILURES])
    more = len(entries) - _SHOWN_FAILURES
    return shown + (f"; and {more} more" if more > 0 else "")


def summary(report: dict[str, Any], source: str, destination: str, check: bool) -> str:
    """The result's msg: what was done, or what failed."""
    if report["failures"]:
        text = (
            f"{len(report['failures'])} failure(s) migrating {source} to {destination}: {_listed(report['failures'])}"
        )
        if report["stopped"]:
            text += " (the run stopped at the first failure; keep_going goes on past failures)"
        return text
    if report.get("verified") is False:
        return f"verification of {destination} found {len(report['mismatches'])} difference(s): " + _listed(
            report["mismatches"]
        )
    totals = report["totals"]
    verb = "would migrate" if check else "migrated"
    return (
        f"{verb} {source} to {destination}: {totals['users_created']} created, {totals['users_updated']} updated, "
        f"{totals['users_unchanged']} unchanged, {totals['users_failed']} failed"
        + f"; {totals['items_created'] + totals['items_updated']} archive items {'to write' if check else 'written'}"
    )


def empty_result() -> dict[str, Any]:
    """The result keys of a run that did not start."""
    data = Report().to_dict()
    return {k: data[k] for k in ("changed", "stores", "totals", "failures", "stopped", "discovered")}


def result_of(report: Report, verify: bool, diff: bool) -> dict[str, Any]:
    """The module's result from the engine's report."""
    data = report.to_dict()
    result = {k: data[k] for k in ("changed", "stores", "totals", "failures", "stopped", "discovered")}
    if verify:
        result["verified"] = data["verified"]
        result["mismatches"] = data["mismatches"]
    if diff:
        result["diff"] = ansible_diff(data.get("diff", []))
    return result


def run_module(module: AnsibleModule) -> None:
    params = module.params
    scrub = Scrubber()
    result = empty_result()

    def fail(message: str, **extra: Any) -> None:
        module.no_log_values.update(scrub.secrets)  # Ansible's own masking, behind ours
        module.fail_json(msg=scrub(message), **_scrubbed(dict(result, **extra), scrub))

    try:
        source, destination, source_label, dest_label = _stores(module, scrub, result)
    except ProsodyMigrateError as exc:
        fail(str(exc))
        return
    _require(module, needed_libraries(source, destination), result)
    if params["jobs"] is not None and params["jobs"] < 1:
        fail(f"jobs must be 1 or more, not {params['jobs']}")
        return
    options = Options(
        check=module.check_mode,
        diff=module._diff,
        verify=params["verify"],
        keep_going=params["keep_going"],
        hosts=params["hosts"] or None,
        stores=params["stores"] or None,
        jobs=params["jobs"] or default_jobs(),
    )
    if params["skip_unchanged"]:
        options.state = params["state_file"] or default_path(source, destination)
    try:
        report = run_migration(source, destination, options)
    except ProsodyMigrateError as exc:
        fail(f"cannot migrate {source_label} to {dest_label}: {exc}")
        return
    except Exception as exc:  # a bug: say so, with the (scrubbed) traceback
        fail(f"internal error: {type(exc).__name__}: {exc}", exception=traceback.format_exc())
        return
    result = _scrubbed(result_of(report, params["verify"], module._diff), scrub)
    for warning in report.warnings:
        module.warn(scrub(warning))
    message = summary(result, source_label, dest_label, module.check_mode)
    module.no_log_values.update(scrub.secrets)
    if report.failed:
        module.fail_json(msg=scrub(message), **result)
    module.exit_json(msg=scrub(message), **result)


def main() -> None:
    run_module(build_module())


if __name__ == "__main__":
    main()
