#!/usr/bin/env bash
# Start PostgreSQL and Redis on 127.0.0.1 when they are not already running; install
# Chromium for the browser test when it is missing.
set -euo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  for _ in $(seq 1 100); do port_open "$1" && return 0; sleep 0.1; done
  echo "error: nothing listens on 127.0.0.1:$1 after starting $2" >&2
  return 1
}

if ! port_open 5432; then
  if command -v pg_ctlcluster >/dev/null 2>&1; then
    echo "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start
    wait_port 5432 PostgreSQL
  else
    echo "error: PostgreSQL is not running on 127.0.0.1:5432 and is not installed" >&2
    exit 1
  fi
fi

if ! port_open 6379; then
  if ! command -v redis-server >/dev/null 2>&1; then
    echo "installing redis-server"
    apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
  fi
  echo "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
    --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_port 6379 Redis
fi

# The console's browser test drives Debian's headless Chromium.
if ! { command -v chromium && command -v chromedriver; } >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing chromium and chromium-driver"
    apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 \
      || { apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; }
  else
    echo "note: no chromium/chromedriver; tests/test_console.py will be skipped" >&2
  fi
fi

# The alert rules are checked and unit-tested by promtool (Debian's prometheus package; its
# daemon is not started).
if ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing promtool (prometheus)"
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 \
      || { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
  else
    echo "note: no promtool; tests/test_monitoring.py will be skipped" >&2
  fi
fi
