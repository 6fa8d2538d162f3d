#!/bin/bash
# Build a Debian bookworm rootfs with Xen 4.17 (hypervisor + toolstack + xenstored) and a
# Debian dom0 kernel, for booting Xen under QEMU (see run-in-dom0.sh).
# Output (in $WORK, default /var/tmp/xenvm):
#   xen          uncompressed multiboot1 Xen image (zcat of /boot/xen-4.17-amd64.gz)
#   vmlinuz      dom0 kernel (Debian linux-image-amd64)
#   initrd.img   small dom0 initramfs (initramfs-tools, MODULES=list: virtio + ext4)
#   rootfs.img   sparse 2G ext4 raw image of the rootfs, attached as /dev/vda
#   versions.txt package versions used
# Requires: root, network access to the Debian mirror, debootstrap, e2fsprogs>=1.43 (mkfs.ext4 -d).
set -euo pipefail
WORK=${WORK:-/var/tmp/xenvm}
# Mirrors: the same Debian mirrors this host's apt already uses (first two URIs found).
apt_uris() { grep -hoE '^(URIs:|deb) +[^ ]+' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | grep -v -- '-security' | head -1 || true; }
apt_sec_uris() { grep -hoE '^(URIs:|deb) +[^ ]+' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | grep -- '-security' | head -1 || true; }
MIRROR=${MIRROR:-$(apt_uris)}
SECMIRROR=${SECMIRROR:-$(apt_sec_uris)}
[ -n "$MIRROR" ] || { echo "no Debian mirror found in /etc/apt; set MIRROR" >&2; exit 2; }
SUITE=bookworm
ROOT=$WORK/rootfs
IMG_SIZE=${IMG_SIZE:-2G}
XENVER=4.17
HERE=$(cd "$(dirname "$0")" && pwd)

mkdir -p "$WORK"
cd "$WORK"
export DEBIAN_FRONTEND=noninteractive LC_ALL=C

# debootstrap and mkfs.ext4 come from the test command (./test.sh), which
# installs qemu-system-x86 together with a matching qemu-utils: installing
# qemu-system-x86 alone here could make apt remove a newer qemu-utils.
for tool in debootstrap mkfs.ext4; do
  command -v "$tool" >/dev/null || { echo "build-image: $tool is missing (./test.sh installs it)" >&2; exit 2; }
done

PKGS=(
  linux-image-amd64 initramfs-tools kmod udev
  xen-hypervisor-$XENVER-amd64 xen-utils-$XENVER xen-utils-common xenstore-utils
  procps iproute2 util-linux busybox-static cpio
)

t0=$(date +%s)
if [ ! -e "$ROOT/.debootstrap-done" ]; then
  rm -rf "$ROOT"
  debootstrap --variant=minbase --include="$(IFS=,; echo "${PKGS[*]}")" \
      "$SUITE" "$ROOT" "$MIRROR"
  touch "$ROOT/.debootstrap-done"
fi
t1=$(date +%s)
echo "[build] debootstrap: $((t1-t0))s"

# ---- pull bookworm-updates / bookworm-security (newer Xen 4.17.x and kernel) ----
cat > "$ROOT/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECMIRROR $SUITE-security main
EOF
printf '#!/bin/sh\nexit 101\n' > "$ROOT/usr/sbin/policy-rc.d"; chmod +x "$ROOT/usr/sbin/policy-rc.d"
# small initramfs: only what is needed to mount /dev/vda (ext4 on virtio-blk)
sed -i 's/^MODULES=.*/MODULES=list/' "$ROOT/etc/initramfs-tools/initramfs.conf"
printf 'virtio_pci\nvirtio_blk\next4\n' > "$ROOT/etc/initramfs-tools/modules"
chroot "$ROOT" apt-get update -qq
chroot "$ROOT" apt-get -y -qq -o Dpkg::Options::=--force-confold dist-upgrade >/dev/null
KVER=$(ls "$ROOT/lib/modules" | sort -V | tail -1)
# drop older kernels pulled in by debootstrap
for old in $(chroot "$ROOT" dpkg-query -W -f '${Package}\n' 'linux-image-6*' | grep -v -- "-$KVER\$" || true); do
  chroot "$ROOT" apt-get -y -qq purge "$old" >/dev/null
done
chroot "$ROOT" apt-get clean
rm -f "$ROOT/usr/sbin/policy-rc.d"
t2=$(date +%s)
echo "[build] upgrade to -security/-updates: $((t2-t1))s"

# ---- configure rootfs ----
echo xendom0 > "$ROOT/etc/hostname"
echo "/dev/vda / ext4 rw,noatime 0 1" > "$ROOT/etc/fstab"
rm -rf "$ROOT/usr/share/doc/"* "$ROOT/usr/share/man/"* "$ROOT/var/lib/apt/lists/"* || true
install -m 0755 "$HERE/xen-test-init" "$ROOT/sbin/xen-test-init"

# tiny busybox initramfs for an optional PV domU test (same kernel as dom0)
DOMU=$ROOT/tmp/domu-initrd
rm -rf "$DOMU"; mkdir -p "$DOMU"/{bin,proc,sys,dev,lib/modules}
cp "$ROOT/bin/busybox" "$DOMU/bin/busybox"
for m in xen-gntalloc xen-gntdev xen-evtchn; do
  f=$(find "$ROOT/lib/modules/$KVER" -name "$m.ko*"); cp "$f" "$DOMU/lib/modules/"
done
cat > "$DOMU/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
echo "DOMU: hello from PV domU, kernel $(uname -r), hypervisor=$(cat /sys/hypervisor/type) uuid=$(cat /sys/hypervisor/uuid)"
for m in /lib/modules/*.ko*; do insmod $m && echo "DOMU: insmod $(basename $m) ok"; done
ls -l /dev/xen | sed 's/^/DOMU: /'
# optional job appended to this initramfs by the dom0 side (concatenated cpio)
if [ -x /job ]; then /job 2>&1 | sed 's/^/DOMU: /'; echo "DOMU: job done"; fi
echo "DOMU: powering off"
poweroff -f
EOF
chmod +x "$DOMU/init"
mkdir -p "$ROOT/var/lib/xentest"
chroot "$ROOT" sh -c 'cd /tmp/domu-initrd && find . | cpio -o -H newc --quiet | gzip -9' > "$ROOT/var/lib/xentest/domu-initrd.gz"
rm -rf "$DOMU"

chroot "$ROOT" update-initramfs -u -k "$KVER" >/dev/null 2>&1
cp "$ROOT/boot/vmlinuz-$KVER" "$WORK/vmlinuz"
cp "$ROOT/boot/initrd.img-$KVER" "$WORK/initrd.img"
# QEMU's multiboot loader needs the uncompressed Xen (a 32-bit ELF wrapper, multiboot1 header)
zcat "$ROOT/boot/xen-$XENVER-amd64.gz" > "$WORK/xen"
echo "$KVER" > "$WORK/KVER"
t3=$(date +%s)
echo "[build] configure+initramfs: $((t3-t2))s"

# ---- ext4 image straight from the directory (no loop mount / privileges beyond root) ----
rm -f "$WORK/rootfs.img"
truncate -s "$IMG_SIZE" "$WORK/rootfs.img"
mkfs.ext4 -q -F -L xenroot -d "$ROOT" "$WORK/rootfs.img"
t4=$(date +%s)
echo "[build] mkfs: $((t4-t3))s  TOTAL: $((t4-t0))s"
ls -la "$WORK/xen" "$WORK/vmlinuz" "$WORK/initrd.img" "$WORK/rootfs.img"
echo "rootfs.img apparent/allocated: $(du -h --apparent-size "$WORK/rootfs.img" | cut -f1) / $(du -h "$WORK/rootfs.img" | cut -f1);  rootfs dir: $(du -sh "$ROOT" | cut -f1)"
chroot "$ROOT" dpkg-query -W -f '${Package} ${Version}\n' \
  xen-hypervisor-$XENVER-amd64 xen-utils-$XENVER xen-utils-common xenstore-utils \
  "linux-image-$KVER" linux-image-amd64 busybox-static | tee "$WORK/versions.txt"
qemu-system-x86_64 --version | head -1 | tee -a "$WORK/versions.txt"
