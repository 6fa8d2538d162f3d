#!/bin/sh
# The xenring jobs of one boot, run in dom0 by xen-test-init (cwd = the 9p
# share holding xenring-xentest and the xs_client test binary).
# Prints "=== STEP <name> rc=<n>" after each step (the host-side test asserts
# on these and on the PASS/FAIL lines); exits with the number of failed steps.
fails=0
step() {
  name=$1; shift
  echo "=== STEP $name"
  "$@"
  rc=$?
  echo "=== STEP $name rc=$rc"
  [ "$rc" = 0 ] || fails=$((fails + 1))
}
mkdir -p /tmp/bin
cp ./xenring-xentest ./xs_client ./xen-c-bench /tmp/bin/
T=/tmp/bin/xenring-xentest
# The benchmark: the same bytes and round trips for xenring and Xen's C libraries.
BENCH_BYTES=${BENCH_BYTES:-33554432}
BENCH_ROUNDS=${BENCH_ROUNDS:-200}
VERIFY_BYTES=${VERIFY_BYTES:-8388608}
export RUST_LOG=${RUST_LOG:-info} NO_COLOR=1

# 1. dom0 alone
step platform $T platform
step xs_client_xenstored env XENRING_TEST_XENSTORED=/run/xenstored/socket \
  /tmp/bin/xs_client --test-threads=4 --skip a_domu_socket_gets_eacces_naming_the_path
step vchan_interop $T vchan-interop

# 2. a busybox PV domU running the agent (chan frontend, then the benchmark peers)
mkdir -p /tmp/extra/tmp && cp $T /tmp/bin/xen-c-bench /tmp/extra/
cat > /tmp/extra/job <<JOB
#!/bin/sh
mkdir -p /tmp/chan
/xen-c-bench verify-server 0 $VERIFY_BYTES 16 || echo "FAIL c-verify server"
/xenring-xentest domu --streams --bench-bytes $BENCH_BYTES --rounds $BENCH_ROUNDS
/xen-c-bench server 0 $BENCH_BYTES 16 $BENCH_ROUNDS || echo "FAIL c-bench server"
JOB
chmod +x /tmp/extra/job /tmp/extra/xenring-xentest /tmp/extra/xen-c-bench
# one gzip stream of two concatenated cpio archives (libxenguest can't inflate multi-member gzip)
{ zcat /var/lib/xentest/domu-initrd.gz; (cd /tmp/extra && find . | cpio -o -H newc --quiet); } | gzip -1 > /tmp/domu-initrd.gz
cat > /tmp/domu.cfg <<CFG
name = "xentest-domu"
type = "pv"
kernel = "/vmlinuz"
ramdisk = "/tmp/domu-initrd.gz"
extra = "console=hvc0 rdinit=/init loglevel=4"
memory = 320
vcpus = 1
on_poweroff = "destroy"
on_crash = "destroy"
CFG
if xl create -q /tmp/domu.cfg; then
  DOMID=$(xl domid xentest-domu)
  echo "domU domid=$DOMID"
  # libxenvchan against itself across domains (the reference), then ours
  step c_vchan_domu /tmp/bin/xen-c-bench verify-client "$DOMID" "$VERIFY_BYTES"
  step vchan_domu $T vchan-dom0 --domu "$DOMID" --bytes "$VERIFY_BYTES"
  step chan $T chan-dom0 --domu "$DOMID" --stall 120
  [ "$rc" = 0 ] || { echo "--- domU console so far"; cat /var/log/xen/console/guest-xentest-domu.log;
                     echo "--- dom0 kernel: faults"; dmesg | grep -iE "segfault|general protection|trap" | tail -5; }
  # vbd: our backend daemon serves a 64 MiB image to the domU's frontend,
  # checked through its NBD export there and in the file here. The kernel's
  # xen-blkback would claim backend/vbd nodes too: unload it first.
  rmmod xen_blkback 2>/dev/null
  step vbd $T vbd-dom0 --domu "$DOMID"
  step bench $T bench-dom0 --domu "$DOMID" --bytes "$BENCH_BYTES" --rounds "$BENCH_ROUNDS"
  # The agent's verdict, through XenStore. It is written when the agent's
  # benchmark part ends, and read here before bench_c: the domU's C server
  # waits for bench_c, so the domain (and its home, which libxl removes
  # when it powers off) is still there.
  agent=
  for i in $(seq 1 120); do
    agent=$(xenstore-read "/local/domain/$DOMID/data/xentest/agent" 2>/dev/null) && break
    sleep 1
  done
  echo "domU agent verdict: ${agent:-none within 120 s}"
  step bench_c /tmp/bin/xen-c-bench client "$DOMID" "$BENCH_BYTES" "$BENCH_ROUNDS"
  for i in $(seq 1 60); do xl list xentest-domu >/dev/null 2>&1 || break; sleep 1; done
  xl list xentest-domu >/dev/null 2>&1 && { echo "domU still running: destroying"; xl destroy xentest-domu; }
  # xenconsoled may write the domU's last lines after the domain is gone:
  # wait for the job's last line before judging by the log.
  for i in $(seq 1 30); do
    grep -q 'job done' /var/log/xen/console/guest-xentest-domu.log && break
    sleep 1
  done
  echo "--- domU console"
  cat /var/log/xen/console/guest-xentest-domu.log
  echo "=== STEP domu_agent"
  if [ "$agent" != ok ] || grep -q 'FAIL' /var/log/xen/console/guest-xentest-domu.log; then
    echo "=== STEP domu_agent rc=1"; fails=$((fails + 1))
  else
    echo "=== STEP domu_agent rc=0"
  fi
else
  echo "=== STEP domu_create rc=1"; fails=$((fails + 1))
fi
echo "=== FAILED STEPS: $fails"
exit $fails
