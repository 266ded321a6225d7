#!/usr/bin/env bash
# The role against a simulated fleet of three Prosody servers (local connections, --forks 3), each with its own
# data directory written by real Prosody's storage code and its own destination: PostgreSQL, MariaDB, SQLite3.
# Checks every host's result, that a second run changes nothing, and that a failed run leaves Prosody as it was.
# Everything it installs goes under a temporary directory. Needs lua5.4 with Prosody in /usr/lib/prosody,
# PostgreSQL at 127.0.0.1:5432 (user root, trust) and MariaDB at 127.0.0.1:3306 (root, no password).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# ansible-test sets ANSIBLE_COLLECTIONS_PATH to the collection under test (and runs a copy of this directory);
# as a plain script, the collection is the checkout this target sits in.
if [[ -n "${ANSIBLE_COLLECTIONS_PATH:-}" ]]; then
  collection="${ANSIBLE_COLLECTIONS_PATH%%:*}/ansible_collections/xmpp/prosody"
else
  collection=$(cd "$here/../../../.." && pwd)
fi
# The MariaDB host runs on the system's /usr/bin/python3 (Debian's) with the role's package installation from
# the distribution (apt: python3-lupa, python3-psycopg, python3-pymysql), so the module and command run with
# Debian's versions. The PostgreSQL host runs on a fresh virtual environment (made here, without the packages)
# with the role's pip installation, so the pip task really installs them from PyPI. The SQLite3 host skips the
# installation; its Python must have what the migrator needs:
# PROSODY_MIGRATE_PYTHON, else ansible-playbook's own Python, else the first python3 on PATH that has it.
distro_python=/usr/bin/python3
if [[ ! -x "$distro_python" ]] || ! command -v apt-get >/dev/null; then
  echo "needs Debian or Ubuntu: apt-get and $distro_python" >&2; exit 1
fi
needs='import lupa, psycopg, pymysql'
python=
for candidate in ${PROSODY_MIGRATE_PYTHON:-} \
    "$(ansible-playbook --version | sed -n 's/^  python version = .*(\(.*\))$/\1/p')" $(type -ap python3); do
  if [[ -x "$candidate" ]] && "$candidate" -c "$needs" 2>/dev/null; then python=$candidate; break; fi
done
[[ -n "$python" ]] || { echo "no Python with lupa, psycopg and PyMySQL: set PROSODY_MIGRATE_PYTHON" >&2; exit 1; }
echo "managed hosts' Python: $python"
work=$(mktemp -d "${TMPDIR:-/tmp}/prosody_migrate_role.XXXXXX")
db="pmr_$$_$RANDOM"
cleanup() {
  psql -h 127.0.0.1 -U root -d postgres -qc "DROP DATABASE IF EXISTS \"$db\"" >/dev/null 2>&1 || true
  mariadb -h 127.0.0.1 -u root -e "DROP DATABASE IF EXISTS \`$db\`" || true
  rm -rf "$work"
}
trap cleanup EXIT
# The PostgreSQL host's Python: a new venv from the base interpreter of the Python found above (Ansible needs
# only the standard library on it); the role's pip task must add lupa, psycopg and PyMySQL.
pip_venv="$work/pip-venv"
"$("$python" -c 'import os, sys; print(os.path.join(sys.base_exec_prefix, "bin", "python3"))')" -m venv "$pip_venv"
pip_python="$pip_venv/bin/python"
if "$pip_python" -c 'import lupa' 2>/dev/null || "$pip_python" -c 'import psycopg' 2>/dev/null ||
    "$pip_python" -c 'import pymysql' 2>/dev/null; then
  echo "the new venv $pip_venv already has a package the role's pip task should install" >&2; exit 1
fi
if [[ -z "${ANSIBLE_COLLECTIONS_PATH:-}" ]]; then  # the checkout, seen as an installed collection
  mkdir -p "$work/collections/ansible_collections/xmpp"
  ln -s "$collection" "$work/collections/ansible_collections/xmpp/prosody"
  export ANSIBLE_COLLECTIONS_PATH="$work/collections"
fi

psql -h 127.0.0.1 -U root -d postgres -v ON_ERROR_STOP=1 -qc "CREATE DATABASE \"$db\" ENCODING 'UTF8' TEMPLATE template0"
mariadb -h 127.0.0.1 -u root -e "CREATE DATABASE \`$db\` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"

# A password with quotes, backslashes and a newline (PostgreSQL trusts root and ignores it), and a
# non-ASCII data path, to prove the template's escaping end to end.
password='p"a\ss'"'"'w\\0rd
next'
for host in pg my lite; do
  data="$work/$host/données-ü/prosody"
  mkdir -p "$data"
  lua5.4 "$collection/tests/corpus/make_corpus.lua" "$data" 4 6 >/dev/null
  printf -- '-- Prosody config\nadmins = { }\nstorage = "internal"\n\nVirtualHost "example.org"\nComponent "conference.example.org" "muc"\n' \
    > "$work/$host/prosody.cfg.lua"
done

"$python" - "$work" "$db" "$password" "$python" "$collection" "$distro_python" "$pip_venv" \
  > "$work/inventory.yml" <<'PY'
import json, sys
work, db, password, python, collection, distro_python, pip_venv = sys.argv[1:]
dests = {
    "pg": {"type": "sql", "driver": "PostgreSQL", "database": db, "host": "127.0.0.1", "port": 5432,
           "username": "root", "password": password},
    "my": {"type": "sql", "driver": "MySQL", "database": db, "host": "127.0.0.1", "port": 3306, "username": "root"},
    "lite": {"type": "sql", "driver": "SQLite3", "database": f"{work}/lite/prosody.sqlite"},
}
hosts = {}
for name, dest in dests.items():
    base = f"{work}/{name}"
    hosts[f"prosody_{name}"] = {
        "ansible_connection": "local",
        "ansible_python_interpreter": python,
        "prosody_migrate_install_packages": False,
        "prosody_migrate_python": python,
        "prosody_migrate_bin_dir": f"{base}/sbin",
        "prosody_migrate_man_dir": f"{base}/man",
        "prosody_migrate_lib_dir": f"{base}/lib",
        "prosody_migrate_config_path": f"{base}/etc/migrator.cfg.lua",
        "prosody_migrate_prosody_config": f"{base}/prosody.cfg.lua",
        "prosody_migrate_backup_dir": f"{base}/backup",
        "prosody_migrate_run": True,
        "prosody_migrate_switch_storage": True,
        "service_log": f"{base}/service.log",
        "collection_root": collection,
        "prosody_migrate_service_stop_command": ["sh", "-c", 'echo stop >> "$0"', f"{base}/service.log"],
        "prosody_migrate_service_start_command": ["sh", "-c", 'echo start >> "$0"', f"{base}/service.log"],
        "prosody_migrate_stores": {
            "input": {"type": "internal", "path": f"{base}/données-ü/prosody",
                      "hosts": {"example.org": "vhost", "conference.example.org": "muc"}},
            "output": dest,
        },
    }
    if name == "my":  # the distribution's packages, installed by the role, for the system's Python
        hosts[f"prosody_{name}"].update({
            "ansible_python_interpreter": distro_python,
            "prosody_migrate_install_packages": True,
            "prosody_migrate_install_method": "distribution",
            "prosody_migrate_python": distro_python,
        })
    if name == "pg":  # pip, into the fresh venv whose Python runs both Ansible's modules and the migrator
        hosts[f"prosody_{name}"].update({
            "ansible_python_interpreter": f"{pip_venv}/bin/python",
            "prosody_migrate_install_packages": True,
            "prosody_migrate_install_method": "pip",
            "prosody_migrate_pip_executable": f"{pip_venv}/bin/pip",
            "prosody_migrate_python": f"{pip_venv}/bin/python",
        })
    if "password" in dest:
        hosts[f"prosody_{name}"]["db_password"] = password
print(json.dumps({"all": {"children": {"fleet": {"hosts": hosts}}}}, ensure_ascii=False, indent=1))
PY

cd "$here"
run() { ansible-playbook -i "$work/inventory.yml" --forks 3 "$@"; }

echo "== bad variables fail before anything is done, saying which"
expect_failure() {  # MESSAGE EXTRA-VARS
  if run fleet.yml --limit prosody_lite -e "$2" > "$work/bad.log" 2>&1; then cat "$work/bad.log"; exit 1; fi
  grep -qF "$1" "$work/bad.log" || { cat "$work/bad.log"; exit 1; }
  [[ ! -e "$work/lite/etc" && ! -e "$work/lite/service.log" ]]
}
expect_failure "argument 'prosody_migrate_run' is of type str and we were unable to convert to bool" \
  '{"prosody_migrate_run": "maybe"}'
expect_failure 'store \"in put\" must be named by a Lua name' '{"prosody_migrate_stores": {"in put": {"type": "internal"}}}'
expect_failure 'each host maps to a list of stores or to one of vhost, muc' \
  '{"prosody_migrate_stores": {"input": {"type": "internal", "hosts": {"example.org": "vhosts"}}}}'

echo "== first run: migrates every host"
run fleet.yml "$@" | tee "$work/run1.log"
[[ $(grep -cE '^prosody_(pg|my|lite) +: ok=[0-9]+ +changed=[1-9]' "$work/run1.log") == 3 ]]
# The apt task ran for the MariaDB host only, and that host's Python has Debian's versions.
apt_task=$(sed -n '/^TASK \[xmpp.prosody.prosody_migrate : Install the packages from the distribution\]/,/^TASK/p' \
  "$work/run1.log")
if ! grep -Eq '^(ok|changed): \[prosody_my\]' <<<"$apt_task"; then
  echo "the apt task did not run for prosody_my" >&2; exit 1
fi
if grep -Eq '^(ok|changed): \[prosody_(pg|lite)\]' <<<"$apt_task"; then echo "the apt task ran for a host that skips it" >&2; exit 1; fi
"$distro_python" -c 'import lupa, psycopg, pymysql, sys; print(sys.executable, "lupa", lupa.__version__,
    "psycopg", psycopg.__version__, "PyMySQL", pymysql.__version__)'
# The pip task installed the packages (changed) into the PostgreSQL host's venv, and for no other host.
pip_task=$(sed -n '/^TASK \[xmpp.prosody.prosody_migrate : Install the packages with pip\]/,/^TASK/p' "$work/run1.log")
if ! grep -q '^changed: \[prosody_pg\]' <<<"$pip_task"; then
  echo "the pip task did not install for prosody_pg" >&2; exit 1
fi
if grep -Eq '^(ok|changed): \[prosody_(my|lite)\]' <<<"$pip_task"; then echo "the pip task ran for a host that skips it" >&2; exit 1; fi
"$pip_python" -c 'import lupa, psycopg, pymysql, sys; print(sys.executable, "lupa", lupa.__version__,
    "psycopg", psycopg.__version__, "PyMySQL", pymysql.__version__)'

echo "== the rendered configs, installed files, Prosody's config and service calls"
run verify.yml "$@"

echo "== every destination holds the same rows"
count_pg=$(psql -h 127.0.0.1 -U root -d "$db" -tAc "SELECT (SELECT count(*) FROM prosody) || ' ' || (SELECT count(*) FROM prosodyarchive)")
count_my=$(mariadb -h 127.0.0.1 -u root -N -D "$db" -e "SELECT CONCAT((SELECT count(*) FROM prosody), ' ', (SELECT count(*) FROM prosodyarchive))")
count_lite=$("$python" -c 'import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); print(*(c.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("prosody", "prosodyarchive")))' "$work/lite/prosody.sqlite")
echo "rows (keyval, archive): pg=$count_pg my=$count_my lite=$count_lite"
[[ "$count_pg" == "$count_my" && "$count_my" == "$count_lite" ]]
[[ "${count_pg%% *}" -gt 0 && "${count_pg##* }" -gt 0 ]]

echo "== second run: nothing changes on any host"
run fleet.yml "$@" | tee "$work/run2.log"
[[ $(grep -cE '^prosody_(pg|my|lite) +: ok=[0-9]+ +changed=0 ' "$work/run2.log") == 3 ]]
grep -q '^TASK \[xmpp.prosody.prosody_migrate : Install the packages from the distribution\]' "$work/run2.log"
for host in pg my lite; do [[ "$(cat "$work/$host/service.log")" == $'stop\nstart' ]]; done

echo "== check mode with new data: reports the change, writes nothing, leaves Prosody alone"
lua5.4 "$collection/tests/corpus/make_corpus.lua" "$work/lite/données-ü/prosody" 6 6 7 >/dev/null
run fleet.yml --check --diff --limit prosody_lite "$@" | tee "$work/check.log"
# The plan (the module in check mode) is what reports the change.
sed -n '/^TASK \[xmpp.prosody.prosody_migrate : Find what the migration would change\]/,/^TASK/p' "$work/check.log" |
  grep -q '^changed: \[prosody_lite\]'
[[ "$(cat "$work/lite/service.log")" == $'stop\nstart' ]]
[[ "$("$python" -c 'import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute("SELECT count(*) FROM prosody").fetchone()[0])' "$work/lite/prosody.sqlite")" == "${count_lite%% *}" ]]

echo "== a failure (Prosody does not start on the new storage): config restored, Prosody started, play fails"
sed -i '/xmpp.prosody.prosody_migrate: storage/,/xmpp.prosody.prosody_migrate: storage/d' "$work/lite/prosody.cfg.lua"
cp "$work/lite/prosody.cfg.lua" "$work/lite/prosody.cfg.lua.before"
# shellcheck disable=SC2016 # $0 is for the sh -c of the start command, not for this shell
if run fleet.yml --limit prosody_lite \
    -e '{"prosody_migrate_service_start_command": ["sh", "-c", "if [ -e \"$0.failed\" ]; then echo start >> \"$0\"; else touch \"$0.failed\"; echo start-failed >> \"$0\"; exit 1; fi", "'"$work/lite/service.log"'"]}' \
    "$@" > "$work/fail.log" 2>&1; then
  echo "the failing run succeeded"; cat "$work/fail.log"; exit 1
fi
grep -q 'failed at "Prosody' "$work/fail.log" || { cat "$work/fail.log"; exit 1; }
grep -q 'Prosody is left on its old storage and started again' "$work/fail.log"
grep -Eq '^prosody_lite +: .* failed=1 .* rescued=1 ' "$work/fail.log"
cmp "$work/lite/prosody.cfg.lua" "$work/lite/prosody.cfg.lua.before"
[[ "$(cat "$work/lite/service.log")" == $'stop\nstart\nstop\nstart-failed\nstart' ]]
echo "== all fleet checks passed"
