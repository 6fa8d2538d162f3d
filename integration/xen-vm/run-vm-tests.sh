#!/bin/bash
# xenring on a real Xen hypervisor: builds what is missing, boots Xen under
# QEMU (software emulation), runs the jobs, prints their output, and exits 0
# only if every job passed.
#
#   integration/xen-vm/run-vm-tests.sh [image|build|boot]    (default: all three)
#
# 1. image: the VM image (build-image.sh), cached in
#    $XENRING_XENVM_CACHE (default /var/tmp/xenring-xenvm)/<hash of
#    build-image.sh and xen-test-init>, built once under a lock.
# 2. build: xenring-xentest and the xs_client test binary, statically linked
#    (they run in dom0 and in a busybox PV domU): release, gnu target,
#    crt-static, in $CARGO_TARGET_DIR (default <repo>/target); xen-c-bench.c
#    (the benchmark's libxenvchan side) with gcc against libxen-dev.
# 3. boot: boot 1 (C xenstored): dom0-job.sh (platform scenarios, XenStore
#    client tests, vchan interop with libxenvchan, a PV domU for the chan
#    device and the benchmark); boot 2 (oxenstored): oxenstored-job.sh.
#
# Needs root, KVM not required (TCG), qemu-system-x86, debootstrap, and the
# Debian mirror apt uses. No QEMU outlives this script (run-in-dom0.sh).
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${XENRING_XENVM_CACHE:-/var/tmp/xenring-xenvm}
KEY=$(cat "$HERE/build-image.sh" "$HERE/xen-test-init" | sha256sum | cut -c1-12)
export WORK=$CACHE/$KEY
what=${1:-all}

for tool in qemu-system-x86_64 debootstrap mkfs.ext4; do
  command -v "$tool" >/dev/null || { echo "run-vm-tests: $tool is missing (the test command ./test.sh installs it)" >&2; exit 2; }
done
[ "$(id -u)" = 0 ] || { echo "run-vm-tests: needs root (debootstrap, chroot)" >&2; exit 2; }

if [ "$what" = all ] || [ "$what" = image ]; then
  mkdir -p "$CACHE"
  (
    flock 9
    if [ ! -e "$WORK/.image-done" ]; then
      echo "[run-vm-tests] building the VM image in $WORK" >&2
      "$HERE/build-image.sh" >"$CACHE/build-$KEY.log" 2>&1 || { tail -30 "$CACHE/build-$KEY.log" >&2; exit 1; }
      touch "$WORK/.image-done"
    fi
  ) 9>"$CACHE/.lock" || { echo "run-vm-tests: image build failed (log: $CACHE/build-$KEY.log)" >&2; exit 1; }
fi

TARGET=x86_64-unknown-linux-gnu
TDIR=${CARGO_TARGET_DIR:-$REPO/target}
OUT=$TDIR/$TARGET/release
BIN=$TDIR/xen-vm
if [ "$what" = all ] || [ "$what" = build ]; then
  cd "$REPO"
  export RUSTFLAGS="-C target-feature=+crt-static"
  cargo build -q --release --locked --target $TARGET -p xenring-integration --bin xenring-xentest >&2 || exit 1
  xs=$(cargo test -q --release --locked --target $TARGET -p xenring --test xs_client --no-run --message-format=json 2>/dev/null \
        | grep '"kind":\["test"\]' | grep '"name":"xs_client"' \
        | grep -o '"executable":"[^"]*"' | tail -1 | cut -d'"' -f4)
  [ -n "$xs" ] && [ -x "$xs" ] || { echo "run-vm-tests: building the xs_client test binary failed" >&2; exit 1; }
  unset RUSTFLAGS
  # Without debug info: they travel over 9p and sit in the domU's RAM.
  mkdir -p "$BIN"
  strip -o "$BIN/xenring-xentest" "$OUT/xenring-xentest" && strip -o "$BIN/xs_client" "$xs" || exit 1
  # The benchmark's C side, on Xen's own libraries (libxen-dev), static for the domU.
  for h in libxenvchan.h xenevtchn.h xenstore.h; do
    [ -e /usr/include/$h ] || { echo "run-vm-tests: /usr/include/$h is missing (./test.sh installs libxen-dev)" >&2; exit 1; }
  done
  gcc -O2 -Wall -static -o "$BIN/xen-c-bench" "$HERE/xen-c-bench.c" \
    -lxenvchan -lxengnttab -lxenevtchn -lxenstore -lxentoollog -lxentoolcore -lpthread 2>/dev/null \
    || { echo "run-vm-tests: building xen-c-bench failed" >&2; exit 1; }
  strip "$BIN/xen-c-bench"
fi

if [ "$what" = all ] || [ "$what" = boot ]; then
  rc=0
  echo "=== MACHINE host: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; VM: QEMU $(qemu-system-x86_64 --version | head -1 | awk '{print $4}') TCG, Xen under software emulation"
  echo "=== BOOT xenstored"
  XENSTORED=xenstored TIMEOUT=${XENRING_VM_TIMEOUT:-1800} CONSOLE_LOG=$WORK/console-xenstored.log \
    "$HERE/run-in-dom0.sh" -f "$BIN/xenring-xentest" -f "$BIN/xs_client" -f "$BIN/xen-c-bench" -s "$HERE/dom0-job.sh"
  r=$?; echo "=== BOOT xenstored rc=$r"; [ $r = 0 ] || rc=1
  echo "=== BOOT oxenstored"
  XENSTORED=oxenstored TIMEOUT=${XENRING_VM_TIMEOUT:-1800} CONSOLE_LOG=$WORK/console-oxenstored.log \
    "$HERE/run-in-dom0.sh" -f "$BIN/xs_client" -s "$HERE/oxenstored-job.sh"
  r=$?; echo "=== BOOT oxenstored rc=$r"; [ $r = 0 ] || rc=1
  exit $rc
fi
