#!/usr/bin/env bash
# Make sure the Postgres and Redis that the tests use are up (they usually are).
set -euo pipefail
PGHOST=${PGHOST:-127.0.0.1}
PGPORT=${PGPORT:-5432}
REDIS_PORT=${REDIS_PORT:-6379}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

if ! port_open "$PGHOST" "$PGPORT"; then
  echo "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main start
fi
if ! port_open 127.0.0.1 "$REDIS_PORT"; then
  echo "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" --save "" \
    --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
fi
for _ in $(seq 1 50); do
  port_open "$PGHOST" "$PGPORT" && port_open 127.0.0.1 "$REDIS_PORT" && exit 0
  sleep 0.2
done
echo "Postgres ($PGHOST:$PGPORT) or Redis (127.0.0.1:$REDIS_PORT) did not come up" >&2
exit 1
