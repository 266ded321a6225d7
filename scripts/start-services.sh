#!/usr/bin/env bash
# Start PostgreSQL and MariaDB when they are down, and wait until both accept connections.
set -euo pipefail
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  echo "Starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
fi
if ! mariadb-admin -h 127.0.0.1 -P 3306 -u root ping >/dev/null 2>&1; then
  echo "Starting MariaDB"
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
fi
for _ in $(seq 1 60); do
  if pg_isready -q -h 127.0.0.1 -p 5432 && mariadb-admin -h 127.0.0.1 -P 3306 -u root ping >/dev/null 2>&1; then
    exit 0
  fi
  sleep 1
done
echo "PostgreSQL or MariaDB did not come up within 60 s" >&2
exit 1
