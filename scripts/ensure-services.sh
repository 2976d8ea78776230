#!/usr/bin/env bash
# Make sure RabbitMQ, PostgreSQL and Redis answer on 127.0.0.1. Starts the local ones
# where their binaries are installed; otherwise says exactly how to start them.
set -uo pipefail

up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_up() {  # port seconds
  local deadline=$((SECONDS + $2))
  while [ $SECONDS -lt $deadline ]; do up "$1" && return 0; sleep 0.5; done
  return 1
}

start_postgres() {
  command -v pg_ctlcluster >/dev/null 2>&1 || return 1
  local version
  version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
  [ -n "$version" ] || return 1
  pg_ctlcluster --skip-systemctl-redirect "$version" main start
}
start_redis() {
  command -v redis-server >/dev/null 2>&1 || return 1
  mkdir -p /tmp/errand-redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /tmp/errand-redis --logfile /tmp/errand-redis/redis.log
}
start_rabbitmq() {
  command -v rabbitmq-server >/dev/null 2>&1 || return 1
  rabbitmq-server -detached
}

declare -A HOWTO=(
  [rabbitmq]="sudo apt-get install rabbitmq-server && sudo rabbitmq-server -detached   (or: docker compose up -d rabbitmq)"
  [postgres]="sudo apt-get install postgresql && sudo pg_ctlcluster <version> main start   (or: docker compose up -d postgres)"
  [redis]="sudo apt-get install redis-server && redis-server --daemonize yes   (or: docker compose up -d redis)"
)
declare -A PORT=([rabbitmq]=5672 [postgres]=5432 [redis]=6379)

failed=0
for svc in postgres redis rabbitmq; do
  port=${PORT[$svc]}
  if up "$port"; then echo "ok: $svc on 127.0.0.1:$port"; continue; fi
  echo "$svc is not answering on 127.0.0.1:$port; trying to start it..."
  if "start_$svc" >/dev/null 2>&1 && wait_up "$port" 60; then
    echo "ok: started $svc"
  else
    echo "ERROR: $svc is not running on 127.0.0.1:$port. Start it with:" >&2
    echo "    ${HOWTO[$svc]}" >&2
    failed=1
  fi
done
exit $failed
