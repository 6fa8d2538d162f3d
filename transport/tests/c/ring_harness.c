/*
 * Differential-test harness for xenring's ring module: drives the C macros
 * of Xen's public/io/ring.h (as shipped by Debian's libxen-dev) on a ring in
 * a shared file, one command per line on stdin, one answer per line on
 * stdout. Compiled and run by transport/tests/ring_h.rs, which runs the same
 * commands on the Rust ring and compares answers and page bytes.
 *
 * usage: ring_harness FILE FIRST_PAGE NPAGES
 * entry type: struct blkif_request/response, or netif_tx with
 * -DRING_NETIF_TX.
 *
 * Commands and answers (the Rust test speaks the same language):
 *   init-front S    shared header initialised as a ring that carried S
 *                   messages, front attached at S       -> size N
 *   attach-back S   back attached at S                  -> size N
 *   put-req ID      request made from ID at req_prod_pvt -> ok | full
 *   push-req                                             -> notify 0|1
 *   take-req        copy of the next request            -> req HEX | none
 *   put-rsp ID      response made from ID at rsp_prod_pvt
 *                                                        -> ok | nothing
 *   push-rsp                                             -> notify 0|1
 *   take-rsp        copy of the next response           -> rsp HEX | none
 *   final-req / final-rsp                                -> work 0|1
 *   free-req                                             -> free N
 *   unconsumed-req / unconsumed-rsp                      -> unconsumed N
 *   front-indexes   -> front REQ_PROD_PVT RSP_CONS
 *   back-indexes    -> back RSP_PROD_PVT REQ_CONS
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* Latest interface: ring.h then expects the barriers from us. */
#define __XEN_INTERFACE_VERSION__ 0x00040e00
#define xen_mb() __atomic_thread_fence(__ATOMIC_SEQ_CST)
#define xen_rmb() __atomic_thread_fence(__ATOMIC_ACQUIRE)
#define xen_wmb() __atomic_thread_fence(__ATOMIC_RELEASE)

#include <xen/xen.h>
#include <xen/io/blkif.h>
#include <xen/io/netif.h>

#ifdef RING_NETIF_TX
typedef struct netif_tx_sring sring_t;
typedef struct netif_tx_front_ring front_t;
typedef struct netif_tx_back_ring back_t;
typedef struct netif_tx_request req_t;
typedef struct netif_tx_response rsp_t;

static void make_req(req_t *r, unsigned long long id)
{
    r->gref = (grant_ref_t)id;
    r->offset = (uint16_t)(id % 4096);
    r->flags = (uint16_t)(id & 0xf);
    r->id = (uint16_t)id;
    r->size = (uint16_t)(id * 3);
}

static void make_rsp(rsp_t *r, unsigned long long id)
{
    r->id = (uint16_t)id;
    r->status = id % 3 == 0 ? -1 : 0;
}
#else
typedef struct blkif_sring sring_t;
typedef struct blkif_front_ring front_t;
typedef struct blkif_back_ring back_t;
typedef struct blkif_request req_t;
typedef struct blkif_response rsp_t;

static void make_req(req_t *r, unsigned long long id)
{
    r->operation = (uint8_t)(id % 2);
    r->nr_segments = 1;
    r->handle = 0x300;
    r->id = id;
    r->sector_number = id * 8;
    r->seg[0].gref = (grant_ref_t)id;
    r->seg[0].first_sect = 0;
    r->seg[0].last_sect = 7;
}

static void make_rsp(rsp_t *r, unsigned long long id)
{
    r->id = id;
    r->operation = (uint8_t)(id % 2);
    r->status = id % 3 == 0 ? -1 : 0;
}
#endif

static void hex(const char *tag, const void *p, size_t n)
{
    const unsigned char *b = p;
    printf("%s ", tag);
    for (size_t i = 0; i < n; i++)
        printf("%02x", b[i]);
    printf("\n");
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s FILE FIRST_PAGE NPAGES\n", argv[0]);
        return 2;
    }
    long first = atol(argv[2]), npages = atol(argv[3]);
    size_t len = (size_t)npages * 4096;
    int fd = open(argv[1], O_RDWR);
    if (fd < 0) {
        perror("open");
        return 1;
    }
    sring_t *s = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd,
                      (off_t)first * 4096);
    if (s == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);

    front_t front;
    back_t back;
    memset(&front, 0, sizeof front);
    memset(&back, 0, sizeof back);
    char line[256], cmd[64];
    while (fgets(line, sizeof line, stdin)) {
        unsigned long long arg = 0;
        int notify, work;
        if (sscanf(line, "%63s %llu", cmd, &arg) < 1)
            continue;
        RING_IDX a = (RING_IDX)arg;
        if (!strcmp(cmd, "init-front")) {
            SHARED_RING_INIT(s);
            s->req_prod = s->rsp_prod = a;
            s->req_event = s->rsp_event = a + 1;
            FRONT_RING_ATTACH(&front, s, a, len);
            printf("size %u\n", RING_SIZE(&front));
        } else if (!strcmp(cmd, "attach-back")) {
            BACK_RING_ATTACH(&back, s, a, len);
            printf("size %u\n", RING_SIZE(&back));
        } else if (!strcmp(cmd, "put-req")) {
            if (RING_FULL(&front)) {
                printf("full\n");
                continue;
            }
            req_t req;
            /* Built in a zeroed local and copied with memcpy so that the
             * padding bytes are defined (zero), as the Rust side writes. */
            memset(&req, 0, sizeof req);
            make_req(&req, arg);
            memcpy(RING_GET_REQUEST(&front, front.req_prod_pvt), &req, sizeof req);
            front.req_prod_pvt++;
            printf("ok\n");
        } else if (!strcmp(cmd, "push-req")) {
            RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&front, notify);
            printf("notify %d\n", notify ? 1 : 0);
        } else if (!strcmp(cmd, "take-req")) {
            if (!RING_HAS_UNCONSUMED_REQUESTS(&back)) {
                printf("none\n");
                continue;
            }
            req_t req;
            memset(&req, 0, sizeof req);
            RING_COPY_REQUEST(&back, back.req_cons, &req);
            back.req_cons++;
            hex("req", &req, sizeof req);
        } else if (!strcmp(cmd, "put-rsp")) {
            /* ring.h would let us overwrite an unconsumed request; the
             * Rust ring refuses, and so do we. */
            if (back.rsp_prod_pvt == back.req_cons) {
                printf("nothing\n");
                continue;
            }
            rsp_t rsp;
            memset(&rsp, 0, sizeof rsp);
            make_rsp(&rsp, arg);
            memcpy(RING_GET_RESPONSE(&back, back.rsp_prod_pvt), &rsp, sizeof rsp);
            back.rsp_prod_pvt++;
            printf("ok\n");
        } else if (!strcmp(cmd, "push-rsp")) {
            RING_PUSH_RESPONSES_AND_CHECK_NOTIFY(&back, notify);
            printf("notify %d\n", notify ? 1 : 0);
        } else if (!strcmp(cmd, "take-rsp")) {
            if (!RING_HAS_UNCONSUMED_RESPONSES(&front)) {
                printf("none\n");
                continue;
            }
            rsp_t rsp;
            memset(&rsp, 0, sizeof rsp);
            RING_COPY_RESPONSE(&front, front.rsp_cons, &rsp);
            front.rsp_cons++;
            hex("rsp", &rsp, sizeof rsp);
        } else if (!strcmp(cmd, "final-req")) {
            RING_FINAL_CHECK_FOR_REQUESTS(&back, work);
            printf("work %d\n", work ? 1 : 0);
        } else if (!strcmp(cmd, "final-rsp")) {
            RING_FINAL_CHECK_FOR_RESPONSES(&front, work);
            printf("work %d\n", work ? 1 : 0);
        } else if (!strcmp(cmd, "free-req")) {
            printf("free %u\n", RING_FREE_REQUESTS(&front));
        } else if (!strcmp(cmd, "unconsumed-req")) {
            printf("unconsumed %u\n", (unsigned)RING_HAS_UNCONSUMED_REQUESTS(&back));
        } else if (!strcmp(cmd, "unconsumed-rsp")) {
            printf("unconsumed %u\n", (unsigned)RING_HAS_UNCONSUMED_RESPONSES(&front));
        } else if (!strcmp(cmd, "front-indexes")) {
            printf("front %u %u\n", front.req_prod_pvt, front.rsp_cons);
        } else if (!strcmp(cmd, "back-indexes")) {
            printf("back %u %u\n", back.rsp_prod_pvt, back.req_cons);
        } else {
            printf("error unknown command %s\n", cmd);
        }
    }
    return 0;
}
