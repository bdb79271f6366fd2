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
cargo xtask gen-layouts --arch arm64 --check
export CTXPROBE_BIN="$PWD/target/release/ctxprobe"
cargo test --release --locked --workspace
# Issue 3's matrix, CI subset: the oldest and newest Go, stripped, PIE and cgo builds (the full
# matrix is `cargo xtask matrix`; its table is in the README).
cargo xtask matrix --cells 1.19:stripped,1.19:pie,1.27:stripped-pie,1.27:cgo
# Issue 9: the same goroutine and thread tests in VMs booted with Debian's kernels: x86_64 with
# the 6.1 kernel (kernel compatibility) and arm64 (cross-built ctxprobe and fixtures).
scripts/vm-tests.sh 6.1
scripts/vm-tests-arm64.sh 6.1
