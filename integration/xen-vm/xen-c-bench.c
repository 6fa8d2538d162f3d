/* xen-c-bench: the C side of xenring's real-Xen benchmark, on Xen's own
 * libraries (libxenvchan, libxenevtchn, libxenstore), doing what the Rust
 * side (xenring-xentest domu / bench-dom0) does with xenring:
 *
 *   server PEER BYTES ORDER   (domU) vchan server at <home>/data/cbench: sends
 *                             BYTES, waits for the client to close; then an
 *                             unbound port for PEER published at
 *                             <home>/data/cbench-evport, echoing ROUNDS events
 *   client SERVER BYTES ROUNDS (dom0) reads BYTES from SERVER's vchan, timed;
 *                             then ROUNDS event round trips, timed
 *   verify-server PEER BYTES ORDER [NAME] / verify-client SERVER BYTES [NAME]
 *                             a two-way exchange, every byte checked, at
 *                             <home>/data/NAME (default cverify; libxenvchan against itself
 *                             across domains: the reference for xenring's)
 *
 * Prints "BENCH libxenvchan ..." lines.  Built on the host (bookworm, the same
 * glibc and Xen 4.17 libraries as the VM image) against libxen-dev:
 *   gcc -O2 -o xen-c-bench xen-c-bench.c -lxenvchan -lxenevtchn -lxenstore
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <libxenvchan.h>
#include <xenevtchn.h>
#include <xenstore.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static int own_domid(struct xs_handle *xs)
{
    unsigned int len;
    char *v = xs_read(xs, XBT_NULL, "domid", &len);
    int d = v ? atoi(v) : -1;
    free(v);
    return d;
}

static char *wait_read(struct xs_handle *xs, const char *path, int secs)
{
    unsigned int len;
    for (int i = 0; i < secs * 20; i++) {
        char *v = xs_read(xs, XBT_NULL, path, &len);
        if (v)
            return v;
        usleep(50000);
    }
    return NULL;
}

static int server(int peer, long long bytes, int order, int rounds)
{
    struct xs_handle *xs = xs_open(0);
    if (!xs) { perror("xs_open"); return 1; }
    int me = own_domid(xs);
    char path[128], evpath[128];
    snprintf(path, sizeof path, "/local/domain/%d/data/cbench", me);
    snprintf(evpath, sizeof evpath, "/local/domain/%d/data/cbench-evport", me);
    size_t ring = (size_t)1 << order;
    struct libxenvchan *c = libxenvchan_server_init(NULL, peer, path, ring, ring);
    if (!c) { perror("libxenvchan_server_init"); return 1; }
    while (libxenvchan_is_open(c) == 2)
        libxenvchan_wait(c);
    static char buf[65536];
    memset(buf, 0x5a, sizeof buf);
    long long off = 0;
    while (off < bytes) {
        size_t n = bytes - off < (long long)sizeof buf ? bytes - off : sizeof buf;
        int w = libxenvchan_write(c, buf, n);
        if (w < 0) { fprintf(stderr, "libxenvchan_write failed\n"); return 1; }
        if (w == 0)
            libxenvchan_wait(c);
        off += w;
    }
    while (libxenvchan_is_open(c))
        libxenvchan_wait(c);
    libxenvchan_close(c);

    xenevtchn_handle *e = xenevtchn_open(NULL, 0);
    if (!e) { perror("xenevtchn_open"); return 1; }
    int port = xenevtchn_bind_unbound_port(e, peer);
    if (port < 0) { perror("xenevtchn_bind_unbound_port"); return 1; }
    char v[32];
    snprintf(v, sizeof v, "%d", port);
    if (!xs_write(xs, XBT_NULL, evpath, v, strlen(v))) { perror("xs_write"); return 1; }
    for (int i = 0; i < rounds; i++) {
        int p = xenevtchn_pending(e);
        if (p < 0) { perror("xenevtchn_pending"); return 1; }
        xenevtchn_unmask(e, p);
        xenevtchn_notify(e, port);
    }
    xenevtchn_close(e);
    xs_close(xs);
    printf("c-bench server: sent %lld bytes, echoed %d events\n", bytes, rounds);
    return 0;
}

static int client(int srv, long long bytes, int rounds)
{
    struct xs_handle *xs = xs_open(0);
    if (!xs) { perror("xs_open"); return 1; }
    char path[128], evpath[128];
    snprintf(path, sizeof path, "/local/domain/%d/data/cbench", srv);
    snprintf(evpath, sizeof evpath, "/local/domain/%d/data/cbench-evport", srv);
    char *rr = wait_read(xs, path, 300);
    free(rr);
    struct libxenvchan *c = NULL;
    for (int i = 0; i < 600 && !c; i++) {
        c = libxenvchan_client_init(NULL, srv, path);
        if (!c)
            usleep(100000);
    }
    if (!c) { perror("libxenvchan_client_init"); return 1; }
    static char buf[65536];
    long long got = 0;
    double t0 = now();
    while (got < bytes) {
        int r = libxenvchan_read(c, buf, sizeof buf);
        if (r < 0) { fprintf(stderr, "libxenvchan_read failed after %lld\n", got); return 1; }
        if (r == 0) {
            if (!libxenvchan_is_open(c)) { fprintf(stderr, "closed after %lld\n", got); return 1; }
            libxenvchan_wait(c);
        }
        got += r;
    }
    double secs = now() - t0;
    libxenvchan_close(c);
    printf("BENCH libxenvchan vchan domU->dom0: %lld bytes in %.3f s = %.1f MiB/s\n",
           bytes, secs, bytes / 1048576.0 / secs);

    char *pv = wait_read(xs, evpath, 120);
    if (!pv) { fprintf(stderr, "no %s\n", evpath); return 1; }
    int rport = atoi(pv);
    free(pv);
    xenevtchn_handle *e = xenevtchn_open(NULL, 0);
    if (!e) { perror("xenevtchn_open"); return 1; }
    int port = xenevtchn_bind_interdomain(e, srv, rport);
    if (port < 0) { perror("xenevtchn_bind_interdomain"); return 1; }
    t0 = now();
    for (int i = 0; i < rounds; i++) {
        xenevtchn_notify(e, port);
        int p = xenevtchn_pending(e);
        if (p < 0) { perror("xenevtchn_pending"); return 1; }
        xenevtchn_unmask(e, p);
    }
    secs = now() - t0;
    printf("BENCH libxenevtchn evtchn dom0<->domU round trip: mean %.1f us over %d\n",
           secs / rounds * 1e6, rounds);
    xenevtchn_close(e);
    xs_close(xs);
    return 0;
}

/* The stream pattern of xenring's checks (scenarios::pump): the 8-byte word
 * at stream offset 8w is an invertible mix of w, xor the salt in every byte,
 * little-endian; it never repeats, so a misplaced byte shows. */
static unsigned char pat(long long i, int salt)
{
    uint64_t x = (uint64_t)(i / 8) * 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 32)) * 0xbf58476d1ce4e5b9ULL;
    x ^= (uint64_t)salt * 0x0101010101010101ULL;
    return (unsigned char)(x >> (8 * (i % 8)));
}

/* Both ways at once, every byte checked: we send pattern `me`, the peer
 * sends pattern `3 - me`.  Non-blocking libxenvchan calls, waiting only when
 * neither direction moved. */
static int exchange(struct libxenvchan *c, long long bytes, int me)
{
    static unsigned char out[16384], in[16384];
    long long sent = 0, recvd = 0;
    c->blocking = 0;
    while (sent < bytes || recvd < bytes) {
        int moved = 0;
        if (sent < bytes) {
            size_t n = bytes - sent < (long long)sizeof out ? bytes - sent : sizeof out;
            for (size_t k = 0; k < n; k++)
                out[k] = pat(sent + k, me);
            int w = libxenvchan_write(c, out, n);
            if (w < 0) { printf("FAIL c-verify: write failed after %lld\n", sent); return 1; }
            sent += w;
            moved |= w > 0;
        }
        if (recvd < bytes) {
            int r = libxenvchan_read(c, in, sizeof in);
            if (r < 0) { printf("FAIL c-verify: read failed after %lld\n", recvd); return 1; }
            for (int k = 0; k < r; k++)
                if (in[k] != pat(recvd + k, 3 - me)) {
                    printf("FAIL c-verify: byte %lld is 0x%02x, expected 0x%02x\n",
                           recvd + k, in[k], pat(recvd + k, 3 - me));
                    return 1;
                }
            recvd += r;
            moved |= r > 0;
        }
        if (!moved) {
            if (!libxenvchan_is_open(c)) { printf("FAIL c-verify: closed at %lld/%lld\n", sent, recvd); return 1; }
            libxenvchan_wait(c);
        }
    }
    printf("PASS c-verify (libxenvchan both ends): %lld bytes each way verified\n", bytes);
    return 0;
}

static int verify_server(int peer, long long bytes, int order, const char *name)
{
    struct xs_handle *xs = xs_open(0);
    if (!xs) { perror("xs_open"); return 1; }
    char path[128];
    snprintf(path, sizeof path, "/local/domain/%d/data/%s", own_domid(xs), name);
    struct libxenvchan *c = libxenvchan_server_init(NULL, peer, path, (size_t)1 << order, (size_t)1 << order);
    if (!c) { perror("libxenvchan_server_init"); return 1; }
    while (libxenvchan_is_open(c) == 2)
        libxenvchan_wait(c);
    int rc = exchange(c, bytes, 1);
    while (libxenvchan_is_open(c))
        libxenvchan_wait(c);
    libxenvchan_close(c);
    xs_close(xs);
    return rc;
}

static int verify_client(int srv, long long bytes, const char *name)
{
    struct xs_handle *xs = xs_open(0);
    if (!xs) { perror("xs_open"); return 1; }
    char path[128];
    snprintf(path, sizeof path, "/local/domain/%d/data/%s", srv, name);
    struct libxenvchan *c = NULL;
    for (int i = 0; i < 3000 && !c; i++) {
        c = libxenvchan_client_init(NULL, srv, path);
        if (!c)
            usleep(100000);
    }
    if (!c) { perror("libxenvchan_client_init"); return 1; }
    double t0 = now();
    int rc = exchange(c, bytes, 2);
    printf("c-verify: %.2f s\n", now() - t0);
    libxenvchan_close(c);
    xs_close(xs);
    return rc;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc == 6 && !strcmp(argv[1], "server"))
        return server(atoi(argv[2]), atoll(argv[3]), atoi(argv[4]), atoi(argv[5]));
    if (argc == 5 && !strcmp(argv[1], "client"))
        return client(atoi(argv[2]), atoll(argv[3]), atoi(argv[4]));
    if (argc >= 5 && !strcmp(argv[1], "verify-server"))
        return verify_server(atoi(argv[2]), atoll(argv[3]), atoi(argv[4]), argc > 5 ? argv[5] : "cverify");
    if (argc >= 4 && !strcmp(argv[1], "verify-client"))
        return verify_client(atoi(argv[2]), atoll(argv[3]), argc > 4 ? argv[4] : "cverify");
    fprintf(stderr, "usage: %s server PEER BYTES ORDER ROUNDS | client SERVER BYTES ROUNDS\n", argv[0]);
    return 2;
}
