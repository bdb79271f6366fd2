#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what is missing (clang-19, Go toolchains
# into .tools/), builds ctxprobe, checks the generated tables, runs unit and integration tests.
# Integration tests attach real BPF probes to real Go processes: run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $(id -u) != 0 ]]; then
  echo "test.sh: run as root (the integration tests attach eBPF probes): sudo $0" >&2
  exit 1
fi
scripts/setup.sh --all-go
export CARGO_TERM_COLOR=never
cargo build --release --locked -p ctxprobe
cargo xtask gen-layouts --check
export CTXPROBE_BIN="$PWD/target/release/ctxprobe"
cargo test --release --locked --workspace
