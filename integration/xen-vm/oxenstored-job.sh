#!/bin/sh
# Second boot, with oxenstored instead of C xenstored: the XenStore client's
# tests against it.
echo "=== xenstored: $(ps -eo comm | grep -E '^o?xenstored' | head -1)"
echo "=== STEP xs_client_oxenstored"
XENRING_TEST_XENSTORED=/run/xenstored/socket ./xs_client --test-threads=4 \
  --skip a_domu_socket_gets_eacces_naming_the_path
rc=$?
echo "=== STEP xs_client_oxenstored rc=$rc"
exit $rc
