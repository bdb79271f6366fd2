#!/usr/bin/env bash
# Kernel compatibility: the goroutine integration tests (agent_once, agent_stream) and the thread
# tests (agent_threads) run inside a QEMU VM booted with one of Debian's x86_64 kernels, against
# the host-built ctxprobe. The test binaries are built here and run in the guest, which sees the
# host's root filesystem read-only and this checkout (and the Go build cache) read-write.
#
#   sudo scripts/vm-tests.sh [KERNEL]     KERNEL: a Debian kernel series, default 6.1
set -euo pipefail
cd "$(dirname "$0")/.."
kernel=${1:-6.1}

if [[ $(id -u) != 0 ]]; then
  echo "vm-tests.sh: run as root: sudo $0" >&2
  exit 1
fi
scripts/setup.sh --vm
export CARGO_TERM_COLOR=never
cargo build --release --locked -p ctxprobe
tests=(agent_once agent_stream agent_threads)
test_args=()
for t in "${tests[@]}"; do test_args+=(--test "$t"); done
# The test executables, from cargo's JSON messages.
mapfile -t bins < <(cargo test --release --locked -p ctxprobe-tests --no-run "${test_args[@]}" \
  --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["executable"])')
((${#bins[@]} == ${#tests[@]})) || { echo "vm-tests.sh: found test binaries: ${bins[*]}" >&2; exit 1; }

gocache=$(readlink -f .tools)/gocache
mkdir -p "$gocache"
script="set -e; export CTXPROBE_BIN=$PWD/target/release/ctxprobe CTXPROBE_TEST_EMULATED=1; status=0"
for b in "${bins[@]}"; do
  script+="; echo \"== \$(basename $b)\"; $b --test-threads=1 --color never || status=1"
done
script+="; exit \$status"
start=$(date +%s)
# One vCPU: with two, Debian's 6.12 kernel panicked under TCG (an int3 Oops in __schedule while
# a probe was detached, i.e. while the kernel patched its own code); with one it does not.
cargo xtask vm --arch x86_64 --kernel "$kernel" --cpus "${VM_CPUS:-1}" --share "$PWD" --share "$gocache" \
  --timeout 1500 -- sh -c "$script"
echo "vm-tests.sh: kernel $kernel: $(( $(date +%s) - start ))s"
