#!/usr/bin/env bash
# A minimal all-in-one OpenStack Swift with the S3 API (s3api + tempauth) on 127.0.0.1, for the
# remote-cache tests (test/remote/). One device on a plain directory (no loop mount), one
# replica, no replicators/auditors: just enough to serve S3 requests.
#
#   test/services/swift.sh start    set up (first time) and start; waits until an object PUT/GET
#                                   works; prints the environment to use. Idempotent: a healthy
#                                   running instance is reused.
#   test/services/swift.sh stop     stop what start started (by pid file)
#   test/services/swift.sh status   exit 0 when it answers, 1 otherwise
#   test/services/swift.sh env      print the environment (AWS_ENDPOINT_URL, keys, bucket)
#
# Needs Debian's packages (installed by .ci/services.sh):
#   apt-get install -y swift-proxy swift-object swift-container swift-account memcached python3-swift
#
# Everything lives under $SWIFT_TEST_DIR (default /tmp/swift-test): etc/ (configs, rings, its own
# swift.conf: /etc/swift is not touched), node/sdb1/ (the device), run/ (pids), log/.
# The bucket $SWIFT_TEST_BUCKET (default fp-cache-test) is created; tests make their own.
# Ports: proxy $SWIFT_TEST_PORT (default 18080), object/container/account +1/+2/+3 of
# $SWIFT_TEST_BACKEND_PORT (default 16200..16202), memcached 16211.
set -euo pipefail

ROOT=${SWIFT_TEST_DIR:-/tmp/swift-test}
PORT=${SWIFT_TEST_PORT:-18080}
BACKEND=${SWIFT_TEST_BACKEND_PORT:-16200}
MEMCACHED_PORT=${SWIFT_TEST_MEMCACHED_PORT:-16211}
ETC=$ROOT/etc
NODE=$ROOT/node
RUN=$ROOT/run
LOG=$ROOT/log
# tempauth user test:tester with key "testing" is the S3 access key "test:tester" / secret "testing".
ACCESS_KEY='test:tester'
SECRET_KEY='testing'
BUCKET=${SWIFT_TEST_BUCKET:-fp-cache-test}
SERVERS=(account container object proxy)

die() { echo "swift.sh: $*" >&2; exit 1; }

print_env() {
  cat <<EOF
AWS_ENDPOINT_URL=http://127.0.0.1:$PORT
AWS_ACCESS_KEY_ID=$ACCESS_KEY
AWS_SECRET_ACCESS_KEY=$SECRET_KEY
AWS_REGION=us-east-1
SWIFT_TEST_BUCKET=$BUCKET
EOF
}

installed() {
  command -v swift-proxy-server >/dev/null && command -v swift-object-server >/dev/null &&
    command -v swift-container-server >/dev/null && command -v swift-account-server >/dev/null &&
    command -v swift-ring-builder >/dev/null && command -v memcached >/dev/null
}

# Swift's own API through tempauth: get a token, PUT and GET a probe object. This proves the
# proxy, all three storage servers and the rings work, which a /healthcheck does not.
probe() {
  local headers token url
  headers=$(curl -fsS -m 5 -D - -o /dev/null -H "X-Storage-User: test:tester" -H "X-Storage-Pass: testing" \
    "http://127.0.0.1:$PORT/auth/v1.0" 2>/dev/null) || return 1
  token=$(printf '%s' "$headers" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-auth-token"{print $2}')
  url=$(printf '%s' "$headers" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-storage-url"{print $2}')
  [ -n "$token" ] && [ -n "$url" ] || return 1
  curl -fsS -m 5 -o /dev/null -X PUT -H "X-Auth-Token: $token" "$url/swift-sh-probe" 2>/dev/null || return 1
  # The bucket printed in the environment, ready for `--remote s3://$BUCKET/...` by hand.
  curl -fsS -m 5 -o /dev/null -X PUT -H "X-Auth-Token: $token" "$url/$BUCKET" 2>/dev/null || return 1
  curl -fsS -m 5 -o /dev/null -X PUT -H "X-Auth-Token: $token" --data-binary ok "$url/swift-sh-probe/ready" 2>/dev/null || return 1
  [ "$(curl -fsS -m 5 -H "X-Auth-Token: $token" "$url/swift-sh-probe/ready" 2>/dev/null)" = ok ]
}

alive() { [ -f "$RUN/$1.pid" ] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }

write_configs() {
  mkdir -p "$ETC" "$NODE/sdb1" "$RUN" "$LOG"
  cat >"$ETC/swift.conf" <<EOF
[swift-hash]
swift_hash_path_suffix = finetune-pipeline-test
swift_hash_path_prefix = finetune-pipeline-test

[storage-policy:0]
name = Policy-0
default = yes
EOF
  local common="[DEFAULT]
swift_dir = $ETC
devices = $NODE
mount_check = false
user = $(id -un)
workers = 0
log_level = INFO
disable_fallocate = true"
  cat >"$ETC/account-server.conf" <<EOF
$common
bind_ip = 127.0.0.1
bind_port = $((BACKEND + 2))

[pipeline:main]
pipeline = account-server

[app:account-server]
use = egg:swift#account
EOF
  cat >"$ETC/container-server.conf" <<EOF
$common
bind_ip = 127.0.0.1
bind_port = $((BACKEND + 1))

[pipeline:main]
pipeline = container-server

[app:container-server]
use = egg:swift#container
allow_versions = true
EOF
  cat >"$ETC/object-server.conf" <<EOF
$common
bind_ip = 127.0.0.1
bind_port = $BACKEND

[pipeline:main]
pipeline = object-server

[app:object-server]
use = egg:swift#object
EOF
  cat >"$ETC/proxy-server.conf" <<EOF
[DEFAULT]
swift_dir = $ETC
bind_ip = 127.0.0.1
bind_port = $PORT
user = $(id -un)
workers = 0
log_level = INFO

[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats s3api tempauth copy slo dlo versioned_writes proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true
allow_account_management = true

[filter:s3api]
use = egg:swift#s3api
location = us-east-1

[filter:tempauth]
use = egg:swift#tempauth
user_admin_admin = admin .admin .reseller_admin
user_test_tester = testing .admin

[filter:healthcheck]
use = egg:swift#healthcheck

[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:$MEMCACHED_PORT

[filter:catch_errors]
use = egg:swift#catch_errors

[filter:gatekeeper]
use = egg:swift#gatekeeper

[filter:proxy-logging]
use = egg:swift#proxy_logging

[filter:listing_formats]
use = egg:swift#listing_formats

[filter:copy]
use = egg:swift#copy

[filter:slo]
use = egg:swift#slo

[filter:dlo]
use = egg:swift#dlo

[filter:versioned_writes]
use = egg:swift#versioned_writes
allow_versioned_writes = true
EOF
}

build_rings() {
  # One replica, one device: part power 8 keeps the rings tiny.
  local ring port
  for ring in account container object; do
    [ -f "$ETC/$ring.ring.gz" ] && continue
    case $ring in object) port=$BACKEND ;; container) port=$((BACKEND + 1)) ;; account) port=$((BACKEND + 2)) ;; esac
    rm -f "$ETC/$ring.builder"
    swift-ring-builder "$ETC/$ring.builder" create 8 1 1 >/dev/null
    swift-ring-builder "$ETC/$ring.builder" add "r1z1-127.0.0.1:$port/sdb1" 1 >/dev/null
    swift-ring-builder "$ETC/$ring.builder" rebalance >/dev/null || true # exits 1 on a warning
    [ -f "$ETC/$ring.ring.gz" ] || die "could not build the $ring ring (see swift-ring-builder $ETC/$ring.builder)"
  done
}

start() {
  installed || die "OpenStack Swift is not installed: apt-get install -y swift-proxy swift-object swift-container swift-account memcached python3-swift (or run .ci/services.sh)"
  if probe; then print_env; return 0; fi
  stop_quietly
  write_configs
  build_rings
  if ! alive memcached; then
    memcached -u "$(id -un)" -l 127.0.0.1 -p "$MEMCACHED_PORT" -U 0 -m 16 >"$LOG/memcached.log" 2>&1 9>&- &
    echo $! >"$RUN/memcached.pid"
  fi
  local server
  for server in "${SERVERS[@]}"; do
    # -v: log to the console (here a file) as well as syslog, which this machine does not have.
    setsid "swift-$server-server" "$ETC/$server-server.conf" -v >"$LOG/$server.log" 2>&1 </dev/null 9>&- &
    echo $! >"$RUN/$server.pid"
  done
  local deadline=$((SECONDS + ${SWIFT_TEST_START_TIMEOUT:-90}))
  until probe; do
    for server in "${SERVERS[@]}"; do
      alive "$server" || { tail -n 30 "$LOG/$server.log" >&2; die "swift-$server-server exited; log: $LOG/$server.log"; }
    done
    [ $SECONDS -lt $deadline ] || { tail -n 30 "$LOG/proxy.log" >&2; die "Swift did not answer within ${SWIFT_TEST_START_TIMEOUT:-90}s; logs in $LOG"; }
    sleep 0.5
  done
  print_env
}

# Our process only: a stale pid file must not kill whatever reused the pid.
ours() { [ -f "$RUN/$1.pid" ] && tr '\0' ' ' 2>/dev/null <"/proc/$(cat "$RUN/$1.pid")/cmdline" | grep -q -- "$2"; }

stop_quietly() {
  local name pids=()
  for name in proxy object container account memcached; do
    if [ "$name" = memcached ]; then ours "$name" "memcached.*$MEMCACHED_PORT" && pids+=("$(cat "$RUN/$name.pid")")
    else ours "$name" "$ETC/$name-server.conf" && pids+=("$(cat "$RUN/$name.pid")"); fi
    rm -f "$RUN/$name.pid"
  done
  [ ${#pids[@]} -gt 0 ] || return 0
  kill "${pids[@]}" 2>/dev/null || true # all at once: each takes ~2 s to shut down gracefully
  local pid running
  for _ in $(seq 50); do
    running=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && running=1; done
    [ $running = 1 ] || break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
}

# One start/stop at a time: two test runs starting together must not both bind the ports.
lock() { mkdir -p "$(dirname "$ROOT")"; exec 9>"$ROOT.lock"; flock -w 120 9 || die "another swift.sh holds $ROOT.lock"; }

case ${1:-} in
  start) lock; start ;;
  stop) lock; stop_quietly ;;
  status) probe ;;
  env) print_env ;;
  *) die "usage: $0 start|stop|status|env" ;;
esac
