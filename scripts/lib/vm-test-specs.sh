# Shared by scripts/vm-tests.sh and scripts/vm-tests-arm64.sh (sourced): which test binaries a
# VM run takes and the libtest filters each gets.

# Splits "NAME NAME:FILTER,FILTER ..." into the arrays tests, filters and test_args (--test NAME).
parse_specs() {
  local spec
  read -r -a specs <<<"$1"
  tests=() filters=() test_args=()
  for spec in "${specs[@]}"; do
    tests+=("${spec%%:*}")
    test_args+=(--test "${spec%%:*}")
    if [[ $spec == *:* ]]; then filters+=("${spec#*:}"); else filters+=(""); fi
  done
}

# The test executables of `CARGO... test --no-run --message-format=json` into the array bins;
# fails unless there is one per test.
find_test_binaries() {
  mapfile -t bins < <("$@" --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["executable"])')
  if ((${#bins[@]} != ${#tests[@]})); then
    echo "$(basename "$0"): found test binaries: ${bins[*]}" >&2
    return 1
  fi
}

# Each test's libtest filters, by test binary (cargo lists binaries in its own order).
bin_filters() {
  local bin=$1 i
  for i in "${!tests[@]}"; do
    if [[ $(basename "$bin") == "${tests[$i]}"-* ]]; then echo "${filters[$i]//,/ }"; return; fi
  done
}
