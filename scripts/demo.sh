#!/usr/bin/env bash
# The README's first command: installs what is missing, builds ctxprobe, starts the bundled demo
# service (fixtures/demo: an order service with a few kinds of goroutine leaks, sending itself
# traffic) and runs ctxprobe against it so you see real findings. Stops the demo at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
GO_VERSION=1.27 # the newest toolchain scripts/setup.sh installs by default
log() { printf 'demo: %s\n' "$*" >&2; }

scripts/setup.sh

log "building ctxprobe (release)"
CARGO_TARGET_DIR="$ROOT/target" cargo build --release --quiet -p ctxprobe
CTXPROBE="$ROOT/target/release/ctxprobe"

log "building the demo service with Go $GO_VERSION"
mkdir -p "$ROOT/target/fixtures/demo"
(cd fixtures/demo &&
  GOTOOLCHAIN=local GOFLAGS=-mod=mod GOWORK=off CGO_ENABLED=0 GOCACHE="$ROOT/.tools/gocache" \
    "$ROOT/.tools/go$GO_VERSION/bin/go" build -o "$ROOT/target/fixtures/demo/demo" .)

out=$(mktemp -d)
"$ROOT/target/fixtures/demo/demo" >"$out/demo.json" 2>"$out/demo.log" &
demo=$!
cleanup() {
  kill "$demo" 2>/dev/null || true
  wait "$demo" 2>/dev/null || true
  rm -rf "$out"
}
trap cleanup EXIT

log "demo service running as pid $demo; letting it leak for a few seconds"
sleep 5
if ! kill -0 "$demo" 2>/dev/null; then
  log "the demo service exited early:"; cat "$out/demo.log" >&2; exit 1
fi

sudo=()
[[ $(id -u) == 0 ]] || sudo=(sudo)
log "running: ${sudo[*]} ctxprobe --pid $demo --threshold 2s --duration 15s --format text"
"${sudo[@]}" "$CTXPROBE" --pid "$demo" --threshold 2s --duration 15s --format text
log "done; stopping the demo service"
