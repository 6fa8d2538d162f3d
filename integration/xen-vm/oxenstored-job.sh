#!/bin/sh
# Second boot, with oxenstored instead of C xenstored: the XenStore client's
# tests against it.
echo "=== xenstored: $(ps -eo comm | grep -E '^o?xenstored' | head -1)"
echo "=== STEP xs_client_oxenstored"
# Not run here: a_domu_socket_gets_eacces_naming_the_path (needs a domU's
# socket), and oversized_and_malformed_requests_are_refused_before_sending,
# whose last step writes a 4096-byte payload with a ~4070-byte value:
# oxenstored applies its node-size quota (2048 bytes) to dom0 too and
# answers E2BIG, where C xenstored and the embedded one accept it (a server
# difference, found by this job; the client's own checks are the same).
# The contended-transaction test (8 tasks incrementing one node) runs here
# too: oxenstored answers EAGAIN far more often than C xenstored, which ran
# the helper out of attempts until its pause scaled with the attempt's
# duration.
XENRING_TEST_XENSTORED=/run/xenstored/socket ./xs_client --test-threads=4 \
  --skip a_domu_socket_gets_eacces_naming_the_path \
  --skip oversized_and_malformed_requests_are_refused_before_sending
rc=$?
echo "=== STEP xs_client_oxenstored rc=$rc"
exit $rc
