#!/usr/bin/env bash
# arm64: the goroutine integration tests (agent_once, agent_stream), the threads tests
# (agent_threads: the C deadlock, a cgo call blocked in C, idle runtime threads), context
# diagnosis (agent_contexts), leak verdicts (agent_leaks' fixture truth, agent_leaks_stream),
# groups (agent_groups), the target's faults and refusals (agent_faults, agent_failures) and
# agent_probes' checks run
# inside Debian's arm64 kernel under QEMU (TCG), against
# an aarch64 ctxprobe and aarch64 test binaries cross-built here with Debian's
# rustc-web, on fixtures built here with GOARCH=arm64 (the guest is a busybox initramfs with
# no Go toolchain: the tests run with CTXPROBE_TEST_PREBUILT=1).
#
#   sudo scripts/vm-tests-arm64.sh [KERNEL]     KERNEL: a Debian kernel series, default 6.1
#   CTXPROBE_TEST_GO (default 1.21,1.27), CTXPROBE_TEST_BUILD (default default,stripped) and
#   VM_TESTS (default: the tests above; NAME or NAME:FILTER,FILTER) narrow or widen the run.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/vm-test-specs.sh
kernel=${1:-6.1}

if [[ $(id -u) != 0 ]]; then
  echo "vm-tests-arm64.sh: run as root: sudo $0" >&2
  exit 1
fi
scripts/setup.sh --vm --all-go
export CARGO_TERM_COLOR=never
export CTXPROBE_TEST_GO=${CTXPROBE_TEST_GO:-1.21,1.27}
export CTXPROBE_TEST_BUILD=${CTXPROBE_TEST_BUILD:-default,stripped}
# agent_probes' cancel storm is left out: see scripts/vm-tests.sh.
default_tests="agent_once agent_stream"
default_tests+=" agent_threads:deadlocked_c_threads,cgo_call_blocked_in_c,idle_runtime_threads"
default_tests+=" agent_leaks:leak_verdicts_match_fixture_truth agent_leaks_stream agent_groups"
default_tests+=" agent_contexts agent_faults agent_failures"
default_tests+=" agent_probes:park_probe_keeps_firing,lost_breakpoint_is_restored"
parse_specs "${VM_TESTS:-$default_tests}"
target=aarch64-unknown-linux-gnu
# Debian's Rust has the aarch64 standard library; the rustup toolchain does not.
cross=(env RUSTC=/usr/bin/rustc /usr/bin/cargo)

"${cross[@]}" build --release --locked --target "$target" -p ctxprobe
find_test_binaries "${cross[@]}" test --release --locked --target "$target" -p ctxprobe-tests \
  --no-run "${test_args[@]}"
# The fixtures, for arm64, where the tests will look for them.
CTXPROBE_TEST_GOARCH=arm64 cargo test --release --locked -p ctxprobe-tests --test fixtures -- \
  --ignored --exact prebuild_matrix_fixtures

env_vars="CTXPROBE_BIN=$PWD/target/$target/release/ctxprobe CTXPROBE_TEST_PREBUILT=1"
env_vars+=" CTXPROBE_TEST_GOARCH=arm64 CTXPROBE_TEST_GO=$CTXPROBE_TEST_GO"
env_vars+=" CTXPROBE_TEST_BUILD=$CTXPROBE_TEST_BUILD CTXPROBE_TEST_EMULATED=1"
script="set -e; export $env_vars; status=0"
for b in "${bins[@]}"; do
  script+="; echo \"== \$(basename $b)\"; $b --test-threads=1 --color never $(bin_filters "$b") || status=1"
done
script+="; exit \$status"
start=$(date +%s)
cargo xtask vm --arch arm64 --kernel "$kernel" --cpus "${VM_CPUS:-2}" --share "$PWD" \
  --timeout 2400 -- sh -c "$script"
echo "vm-tests-arm64.sh: kernel $kernel: $(( $(date +%s) - start ))s"
