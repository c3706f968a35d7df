/*
 * The vhost-user-blk export's insides shared by its files:
 *   vhost-user-blk.c  control socket I/O, listener and export registry,
 *                     IOThread moves
 *   vhost-user-ctl.c  the vhost-user control messages
 *   vhost-user-vq.c   split and packed virtqueues and the virtio-blk requests
 * (vhost-user-proto.c parses messages and walks descriptors.)
 */
#ifndef VDISK_VHOST_USER_INT_H
#define VDISK_VHOST_USER_INT_H
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "vdisk/coroutine.h"
#include "vdisk/iov.h"
#include "vdisk/log.h"
#include "export/vhost-user-blk.h"
#include "export/vhost-user-proto.h"
#include "export/export-listen.h"

#define VHU_SECTOR 512
#define VHU_SEG_MAX (VHU_MAX_SEGS - 2)
#define VHU_MAX_DISCARD_SECTORS (1u << 21)   /* 1 GiB per request */

typedef struct VhuConn VhuConn;
typedef struct VhuVq VhuVq;

typedef struct VhuReq {
    VhuVq *vq;
    uint16_t head;
    uint8_t *status;
    uint32_t type;
    uint64_t sector;
    VdIOVector qiov;           /* data segments; array kept across reuse */
    VhuChain *chain;           /* only for DISCARD/WRITE_ZEROES/GET_ID payloads */
    struct iovec seg[2];       /* discard/write-zeroes descriptor, GET_ID buffer */
    int nseg;
    uint32_t in_data;          /* bytes of device-writable data (IN, GET_ID) */
    uint16_t ndescs;           /* packed ring: ring entries the buffer took */
    struct VhuReq *next_free;
} VhuReq;

struct VhuVq {
    VhuConn *conn;
    int index;
    uint32_t num;
    VhuVringAddr addr;
    bool addr_set;
    VringDesc *desc;
    uint16_t *avail;           /* flags, idx, ring[num], used_event */
    uint16_t *used;            /* flags, idx, then VringUsedElem ring[num], avail_event */
    int kick_fd;
    int call_fd;
    int err_fd;
    bool started;              /* kick fd received, not stopped by GET_VRING_BASE */
    bool enabled;
    bool handler_on;           /* kick handler registered in conn->ctx */
    bool broken;               /* avail index jumped: stop until reset */
    bool throttled;            /* at the in-flight cap */
    bool need_start;           /* read used idx / resume inflight at first run */
    bool notify_off;           /* kicks suppressed: the context busy-polls the ring */
    uint16_t last_avail;
    uint16_t used_shadow;      /* used idx including unpublished completions */
    uint16_t used_published;
    int n_inflight;            /* requests running (not yet completed) */
    VhuInflightQueue *infl;
    uint64_t infl_counter;
    uint16_t *batch;           /* heads completed since the last publish */
    uint32_t n_batch;
    VhuReq *free_reqs;
    uint64_t bad_chains;
    /* Packed ring (VIRTIO_F_RING_PACKED): desc is the descriptor ring,
     * avail the driver event suppression area, used the device's. */
    bool packed;
    bool avail_wrap;
    bool used_wrap;
    uint16_t pused;            /* next used position */
    struct { uint16_t id, ndescs; uint32_t len; } *pend;  /* unpublished completions */
    uint32_t n_pend;
};

struct VhuConn {
    VdVhuExport *exp;
    VdAioContext *ctx;
    int fd;
    VdCoroutine *ctl_co;
    VdCoroutine *io_waiter;    /* ctl waiting for the socket */
    bool io_wait_write;
    bool ctl_parked;           /* ctl is waiting for the socket (safe to move) */
    bool quiesced;             /* no handlers registered (IOThread move) */
    VdCoroutine *idle_waiter;  /* ctl waiting for in-flight requests */
    int pause;                 /* > 0: rings do not pop new requests */
    uint64_t features;
    uint64_t protocol_features;
    bool wce;
    VhuMem mem;
    void *infl_base;
    size_t infl_len;
    VdBH *flush_bh;
    bool flush_scheduled;
    unsigned nvq;
    VhuVq vq[VD_VHU_MAX_QUEUES];
    VhuChain scratch;
    int n_inflight;            /* atomic: over all rings */
    bool closing;
    bool dead;                 /* torn down; the main thread frees it */
};

struct VdVhuExport {
    char *id;
    char *serial;
    char *path;
    VdBackend *blk;
    bool writable;
    unsigned num_queues;
    unsigned lbs;
    int64_t size;
    VdListener *listener;
    VhuConn *conn;             /* atomic pointer; owned by the conn's context */
    bool quiescing;
    bool deleting;
    VdVhuExport *next;
};


/* vhost-user-blk.c */
void vhu_listener_arm(VdVhuExport *e);
int coroutine_fn vhu_recv(VhuConn *c, void *buf, size_t len, int *fds, int *nfds);
int coroutine_fn vhu_reply(VhuConn *c, uint32_t request, const void *payload, uint32_t size, int fd);
int coroutine_fn vhu_reply_u64(VhuConn *c, uint32_t request, uint64_t v);

/* vhost-user-vq.c */
void vhu_close_fd(int *fd);
void vhu_conn_flush_bh(void *opaque);
void coroutine_fn vhu_conn_reset(VhuConn *c);
void vhu_inflight_unmap(VhuConn *c);
void vhu_mem_unmap(VhuMem *mem);
void vhu_vq_process(VhuVq *vq);
void vhu_vq_set_handler(VhuVq *vq, bool on);
void vhu_vq_stop(VhuVq *vq);
void coroutine_fn vhu_wait_idle(VhuConn *c, VhuVq *vq);
int vq_translate(VhuVq *vq);

/* vhost-user-ctl.c */
void coroutine_fn vhu_conn_loop(void *opaque);

#endif
