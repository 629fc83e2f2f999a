#!/usr/bin/env bash
# CI services: installs (when missing) and starts the OpenStack Swift that the S3 remote-cache
# tests use (test/services/swift.sh; it prints the AWS_* environment it serves), and installs
# redis-server for the BullMQ tests (they start their own on a free port). Call it from
# .ci/run before the tests, and make a missing Swift a failure there instead of a skip:
#   bash .ci/services.sh && export REMOTE_TESTS_REQUIRED=1
# Measured on the 2-core machine: install ~65-130 s (apt-get update included), first start ~27 s,
# later starts ~9 s. The test file reuses a running Swift and leaves it running.
# Also installs Debian's chromium when missing: test/e2e/report.test.ts opens the run report in
# it headless (and fails under CI without it).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null; then
  started=$SECONDS
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q chromium >/dev/null
  echo "services: installed chromium in $((SECONDS - started)) s"
fi
packages=(swift-proxy swift-object swift-container swift-account memcached python3-swift)
if ! command -v swift-proxy-server >/dev/null || ! command -v swift-object-server >/dev/null ||
  ! command -v swift-container-server >/dev/null || ! command -v swift-account-server >/dev/null ||
  ! command -v memcached >/dev/null; then
  started=$SECONDS
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q "${packages[@]}" >/dev/null
  echo "services: installed Swift in $((SECONDS - started)) s"
fi
if ! command -v redis-server >/dev/null; then
  started=$SECONDS
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q redis-server >/dev/null
  echo "services: installed redis-server in $((SECONDS - started)) s"
fi
started=$SECONDS
bash test/services/swift.sh start
echo "services: Swift (s3api) up in $((SECONDS - started)) s"
