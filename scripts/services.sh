#!/usr/bin/env bash
# Make sure the database servers the tests use are up on loopback: PostgreSQL (trust auth) and
# MariaDB (root, empty password). Starts an installed server that is down; says so and carries
# on when one is not installed (its tests are then skipped with that reason).
set -u

if command -v pg_isready >/dev/null 2>&1; then
  if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
      echo "services: starting PostgreSQL"
      pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start || true
    fi
  fi
else
  echo "services: PostgreSQL is not installed; its tests will be skipped"
fi

if command -v mysqladmin >/dev/null 2>&1; then
  if ! mysqladmin -h 127.0.0.1 -u root ping >/dev/null 2>&1; then
    if command -v mariadbd >/dev/null 2>&1; then
      echo "services: starting MariaDB"
      start-stop-daemon --start --oknodo --background --exec "$(command -v mariadbd)" || true
      for _ in $(seq 1 30); do
        mysqladmin -h 127.0.0.1 -u root ping >/dev/null 2>&1 && break
        sleep 1
      done
    fi
  fi
else
  echo "services: MariaDB is not installed; its tests will be skipped"
fi
exit 0
