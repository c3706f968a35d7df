/*
 * The NBD server's insides shared by its files:
 *   nbd-conn.c          connection I/O primitives, lifetime, buffer pool,
 *                       quiesce/resume/disconnect of an export's connections
 *   nbd-handshake.c     the fixed-newstyle option haggling (main context)
 *   nbd-transmission.c  requests and replies (the export's context)
 *   nbd-listen.c        listening sockets, accepting, the server's limits
 * All server-wide state is in one object, g_nbd_server, under its lock.
 */
#ifndef VDISK_NBD_INT_H
#define VDISK_NBD_INT_H
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <unistd.h>

#include "vdisk/coroutine.h"
#include "vdisk/log.h"
#include "export/export.h"
#include "export/export-listen.h"
#include "export/nbd-proto.h"

#define NBD_RBUF_SIZE       (64 * 1024)
#define NBD_MAX_IN_FLIGHT   128
#define NBD_GRACEFUL_CLOSE_NS (10LL * 1000 * 1000 * 1000)
#define NBD_MAX_INFLIGHT_BYTES (64u * 1024 * 1024)   /* per connection */
#define NBD_MAX_EXTENTS     1024
#define NBD_READ_MAX_CHUNKS 16
#define NBD_MAX_SKIPPED_OPTION (1024 * 1024)
#define NBD_POOL_CLASSES    6      /* 4k, 8k, ..., 128k */
#define NBD_POOL_DEPTH      32
#define NBD_OBUF_SIZE       (128 * 1024)
#define NBD_BATCH_MAX_REPLY (64 * 1024 + 64)

struct NbdConn {
    int fd;
    VdAioContext *ctx;            /* where the connection is served now */
    VdExport *exp;                /* set at the end of the handshake */
    NbdConn *next_in_export;
    NbdConn *next;                /* global list */

    /* handshake */
    VdTimer *handshake_timer;
    bool handshake_timed_out;
    bool no_zeroes;
    bool structured;
    unsigned meta;                /* selected contexts (bitmask) */
    char *meta_export;            /* export the contexts were selected for */
    NbdExportLimits lim;

    /* socket I/O (conn's context only) */
    uint8_t *rbuf;
    size_t rpos, rlen;
    VdCoroutine *recv_waiter;
    VdCoroutine *send_waiter;
    bool read_registered, write_registered;
    bool broken;                  /* a send failed or a reply was cut: no more sends */
    VdCoMutex send_lock;          /* held while a reply (or a batch) is written */
    /* Reply batching: small replies are copied into obuf; the first sender
     * (the flusher) lets other ready requests of this loop round append
     * theirs, then writes the lot with one sendmsg. */
    uint8_t *obuf, *obuf_spare;
    size_t obuf_len;
    bool flusher_active;

    /* transmission */
    int in_flight;                /* atomic reads from main */
    bool closing;                 /* stop reading; close when in_flight == 0 */
    bool parked;                  /* atomic: receive loop stopped for a quiesce */
    VdCoroutine *recv_sleeper;    /* receive loop waiting for in_flight to drop */
    uint64_t inflight_bytes;      /* data buffers of requests in flight */
    /* Data buffers for requests up to 128 KiB, reused instead of malloc'ed
     * per request (fresh pages fault on every touch). Conn's thread only. */
    void *pool[NBD_POOL_CLASSES][NBD_POOL_DEPTH];
    int pool_n[NBD_POOL_CLASSES];
    int refcnt;                   /* atomic: the connection itself + pending BHs */
    bool dead;                    /* closed; pending BHs do nothing */
};

struct NbdListener {
    VdListener *listener;         /* accepting paused while !g_nbd_server.accepting */
    struct NbdListener *next;
};

typedef struct NbdListener NbdListener;

/* The NBD server: every connection and listener, under one small lock. */
typedef struct NbdServer {
    pthread_mutex_t lock;
    NbdConn *conns;               /* every connection (lock) */
    int n_conns;                  /* atomic reads without the lock */
    NbdListener *listeners;       /* main thread */
    int max_conns;                /* 0: no limit */
    /* false while the daemon is still setting up: listeners exist (clients
     * queue in the backlog) but nothing is accepted, so no client sees a
     * partial set of exports. */
    bool accepting;
    int64_t handshake_timeout_ns;
} NbdServer;

extern NbdServer g_nbd_server;

/* nbd-conn.c */
int coroutine_fn nbd_co_read(NbdConn *c, void *buf, size_t len, bool at_boundary);
int coroutine_fn nbd_co_skip(NbdConn *c, uint64_t len);
int coroutine_fn nbd_co_write(NbdConn *c, const void *buf, size_t len);
int coroutine_fn nbd_co_writev(NbdConn *c, struct iovec *iov, int niov);
void nbd_conn_abort_bh(void *opaque);
void nbd_conn_free(NbdConn *c);
bool nbd_conn_quiescing(NbdConn *c);
void nbd_conn_schedule(NbdConn *c, VdBHFunc *fn);
void nbd_conn_update_handlers(NbdConn *c);
void nbd_wait_conns_gone(VdExport *only, const bool *expired);

/* nbd-transmission.c */
void coroutine_fn nbd_conn_recv_loop(void *opaque);
void nbd_conn_start_bh(void *opaque);

#endif
