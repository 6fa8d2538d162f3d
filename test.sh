#!/usr/bin/env bash
# The test command (README.md, "The two commands"; CI's .ci/run calls it).
#
#   ./test.sh [cargo test arguments...]
#
# 1. Installs what the tests need, with apt, when any of it is missing, and
#    checks afterwards that every tool is there (naming the one that is not):
#    - gcc and Xen's C headers (libxen-dev: /usr/include/xen/io/ring.h and
#      libxenvchan) for the ring.h differential test and the VM benchmark's
#      C peer;
#    - Debian's xenstore tools (xenstore-utils) for the xenstored tests;
#    - qemu-utils (qemu-img, qemu-io, qemu-nbd) and libnbd-bin (nbdinfo:
#      the exact size of an odd-sized export, which qemu rounds up to
#      512 bytes, and the allocation map) for the block device's
#      real-client tests, and qemu-system-x86 for the real-Xen VM tests,
#      both at one version from one release in one apt call (a machine may
#      come with a backported qemu-utils that qemu-system-x86 from the
#      release cannot sit beside: apt would remove it);
#    - iproute2 and iputils-ping for the network device's tests;
#    - debootstrap, e2fsprogs, cpio and binutils for the VM image.
# 2. Builds the Xen VM image once (cached under /var/tmp/xenring-xenvm), so
#    its few minutes show apart from the tests.
# 3. Runs the whole suite, every test binary even after one fails, and ends
#    with one line: "tests: N passed, N failed, N skipped" (skipped: ignored).
#
# Needs root (apt, network namespaces, TAP devices, the VM); as another user
# it runs apt through sudo when something is missing.
#
# Disk: the test build keeps line tables only (enough for backtraces) and no
# incremental state, about 2 GiB of target/ instead of 7 (a CI run once died
# in the linker, "ld terminated with signal 7 [Bus error]", on a full disk).
# The free space is printed before and after the run.
set -uo pipefail
cd "$(dirname "$0")"
export DEBIAN_FRONTEND=noninteractive

say() { printf '== %s\n' "$*"; }
free_space() { df -Ph "${CARGO_TARGET_DIR:-target}" 2>/dev/null | awk 'NR == 2 {print $4 " free on " $6}' || df -Ph . | awk 'NR == 2 {print $4 " free on " $6}'; }
die() { printf 'test.sh: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

installed_version() { dpkg-query -W -f '${Version}' "$1" 2>/dev/null; }

# tool -> Debian package (a path for files that are not commands)
tools=(
  "cc gcc"
  "/usr/include/xen/io/ring.h libxen-dev"
  "/usr/include/libxenvchan.h libxen-dev"
  "xenstore-read xenstore-utils"
  "qemu-img qemu-utils"
  "qemu-io qemu-utils"
  "qemu-nbd qemu-utils"
  "nbdinfo libnbd-bin"
  "qemu-system-x86_64 qemu-system-x86"
  "ip iproute2"
  "ping iputils-ping"
  "debootstrap debootstrap"
  "mkfs.ext4 e2fsprogs"
  "cpio cpio"
  "strip binutils"
  "flock util-linux"
  "gzip gzip"
)

present() {
  case $1 in
    /*) [ -e "$1" ] ;;
    *) command -v "$1" >/dev/null 2>&1 ;;
  esac
}

missing_tools() {
  local t
  for t in "${tools[@]}"; do
    set -- $t
    present "$1" || printf '%s (Debian package %s)\n' "$1" "$2"
  done
}

install_packages() {
  local need=() t
  for t in "${tools[@]}"; do
    set -- $t
    case $2 in qemu-utils | qemu-system-x86) continue ;; esac
    present "$1" || case " ${need[*]} " in *" $2 "*) ;; *) need+=("$2") ;; esac
  done
  # qemu-utils and qemu-system-x86 come from one source package: they must be
  # the same version, whatever the machine had before.
  local qu qs
  qu=$(installed_version qemu-utils)
  qs=$(installed_version qemu-system-x86)
  local qemu_ok=1
  { [ -n "$qu" ] && [ "$qu" = "$qs" ]; } || qemu_ok=0
  for t in qemu-img qemu-io qemu-nbd qemu-system-x86_64; do present "$t" || qemu_ok=0; done
  if [ ${#need[@]} -eq 0 ] && [ $qemu_ok = 1 ]; then
    say "packages: all present (qemu-utils and qemu-system-x86 $qu)"
    return 0
  fi
  say "packages: installing ${need[*]}${need[*]:+ }$([ $qemu_ok = 1 ] || echo "qemu-utils qemu-system-x86 (installed: qemu-utils ${qu:-none}, qemu-system-x86 ${qs:-none})")"
  as_root apt-get update -q || die "apt-get update failed"
  if [ $qemu_ok = 0 ]; then
    local v
    v=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
    [ -n "$v" ] && [ "$v" != "(none)" ] || die "apt has no qemu-system-x86 to install"
    need+=("qemu-utils=$v" "qemu-system-x86=$v")
  fi
  as_root apt-get install -y -q --allow-downgrades "${need[@]}" || die "apt-get install ${need[*]} failed"
}

# ------------------------------------------------------------------ 1.
install_packages
missing=$(missing_tools)
[ -z "$missing" ] || die "after installing, still missing: $(echo "$missing" | paste -sd, - | sed 's/,/, /g')"
qu=$(installed_version qemu-utils); qs=$(installed_version qemu-system-x86)
[ "$qu" = "$qs" ] || die "qemu-utils $qu and qemu-system-x86 $qs differ"
say "tools: all present (qemu $qu)"

# ------------------------------------------------------------------ 2.
say "the Xen VM image"
integration/xen-vm/run-vm-tests.sh image || die "building the Xen VM image failed"

# ------------------------------------------------------------------ 3.
export CARGO_INCREMENTAL=0 CARGO_PROFILE_DEV_DEBUG=line-tables-only
mkdir -p "${CARGO_TARGET_DIR:-target}"
say "disk: $(free_space)"
say "cargo test --workspace --locked --no-fail-fast $*"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
t0=$(date +%s)
cargo test --workspace --locked --no-fail-fast "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
secs=$(( $(date +%s) - t0 ))
say "disk: $(free_space)"
# cargo prints one "test result:" line per test binary and doc-test run.
awk -v rc="$rc" -v secs="$secs" '
  /^test result:/ {
    for (i = 1; i < NF; i++) {
      w = $(i + 1); sub(/[;,]$/, "", w)
      if (w == "passed") p += $i; else if (w == "failed") f += $i; else if (w == "ignored") g += $i
    }
    runs++
  }
  /^error: .*(failed|could not compile)/ { errs++ }
  END {
    if (rc != 0 && f == 0) f = 1   # a binary that did not build or crashed counts as a failure
    printf "test binaries: %d, cargo exit %d, %d s\n", runs, rc, secs
    printf "tests: %d passed, %d failed, %d skipped\n", p, f, g
    exit (rc != 0 || p == 0) ? 1 : 0
  }' "$log"
