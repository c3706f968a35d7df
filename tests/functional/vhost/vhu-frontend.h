/*
 * A small vhost-user front-end (the "VMM side") for tests and benchmarks:
 * memfd guest memory, split virtqueues, kick/call eventfds, virtio-blk
 * requests. Drives vdiskd and qemu-storage-daemon alike.
 */
#ifndef VHU_FRONTEND_H
#define VHU_FRONTEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "export/vhost-user-proto.h"

#define FE_MAX_QUEUES 8
#define FE_SLOT_DATA (1u << 20)          /* data bytes per request slot */
#define FE_GPA_BASE 0x40000000ull        /* guest addresses differ from user addresses */

typedef struct FeQueue {
    uint16_t num;
    int depth;                  /* request slots */
    VringDesc *desc;
    uint16_t *avail;
    uint16_t *used;
    uint64_t desc_gpa, avail_gpa, used_gpa;
    int kick, call;
    uint16_t avail_idx;
    uint16_t last_used;
    uint8_t *slots;             /* slot s: hdr at +0, status at +16, indirect table at +64,
                                 * data at +4096 */
    uint64_t slots_gpa;
    uint64_t kicks;
    uint16_t kick_idx;          /* split: avail index at the last kick decision */
    /* packed ring: desc is the descriptor ring, avail the driver event
     * area, used the device event area */
    bool avail_wrap;
    bool used_wrap;
    uint8_t ndescs[256];        /* ring entries each slot's buffer takes */
} FeQueue;

typedef struct Fe {
    int sock;
    int memfd;
    uint8_t *mem;
    size_t mem_size;
    uint64_t features;          /* negotiated */
    uint64_t offered;
    uint64_t pfeatures;
    int nq;
    FeQueue q[FE_MAX_QUEUES];
    bool indirect;              /* post requests through indirect tables */
    bool event_idx;
    bool packed;
    int64_t reap_spin_ns;       /* fe_reap: busy-poll the used ring this long before
                                 * asking for a call and sleeping (0: sleep at once) */
    int inflight_fd;
    uint8_t *inflight;
    uint64_t inflight_size;
    VirtioBlkConfig config;
} Fe;

typedef struct FeOpts {
    int nq;
    int qsize;
    int depth;                  /* slots per queue (<= qsize / 3, or qsize with indirect) */
    bool event_idx;
    bool indirect;
    bool inflight;              /* GET/SET_INFLIGHT_FD */
    bool reuse_inflight;        /* keep fe->inflight_fd from a previous connection */
    bool packed;                /* VIRTIO_F_RING_PACKED */
} FeOpts;

/* Connect to path (retrying for up to 10 s while it does not exist). */
int fe_connect(Fe *fe, const char *path);
void fe_disconnect(Fe *fe);
/* Allocate guest memory (once) and negotiate + start the rings. */
int fe_setup(Fe *fe, const FeOpts *o);
/* Raw message: send request with payload and fds; if reply_to, wait for a
 * reply of that request into reply (up to *reply_len bytes). */
int fe_msg(Fe *fe, uint32_t request, uint32_t flags, const void *payload, uint32_t size,
           const int *fds, int nfds, void *reply, uint32_t *reply_len);
/* SET_VRING_ADDR's 40-byte payload from a. */
void fe_vring_addr_encode(const VhuVringAddr *a, uint8_t out[40]);
int fe_get_u64(Fe *fe, uint32_t request, uint64_t *v);
int fe_set_u64(Fe *fe, uint32_t request, uint64_t v, bool ack);

/* Slot data buffer of queue q. */
uint8_t *fe_slot_data(Fe *fe, int q, int slot);
uint64_t fe_slot_data_gpa(Fe *fe, int q, int slot);
/* Post one virtio-blk request in slot (data: len bytes in the slot's data
 * buffer, device-writable for IN/GET_ID). Does not kick. */
void fe_post(Fe *fe, int q, int slot, uint32_t type, uint64_t sector, uint32_t len);
/* Packed ring: post the raw chain d[0..n) (flags NEXT/WRITE/INDIRECT) as
 * buffer id slot (hostile tests). */
void fe_post_packed(Fe *fe, int q, int slot, VringDesc *d, int n);
/* Put a raw head into the avail ring (hostile tests). */
void fe_post_head(Fe *fe, int q, uint16_t head);
/* Notify the device of what was posted since the last kick, unless it
 * suppressed notifications (EVENT_IDX avail_event as a Linux driver
 * honours it, VRING_USED_F_NO_NOTIFY, the packed device event area). */
void fe_kick(Fe *fe, int q);
/* Collect completions: slot numbers (head / 3, or the head with indirect)
 * and used lengths. Waits up to timeout_ms for the first one (0: none).
 * With fe->reap_spin_ns it first busy-polls the used ring and asks for a
 * call (used_event) only before it sleeps.
 * Returns the number collected or -ETIMEDOUT. */
int fe_reap(Fe *fe, int q, int *slots, uint32_t *lens, int max, int timeout_ms);
uint8_t fe_slot_status(Fe *fe, int q, int slot);
/* One request, synchronously: returns its status (0-2), or -errno. */
int fe_request(Fe *fe, int q, uint32_t type, uint64_t sector, void *buf, uint32_t len);
/* Read and clear the call eventfd counter of q (0 if nothing). */
uint64_t fe_call_count(Fe *fe, int q);
/* The ring position the next request goes to (packed: | wrap << 15): what
 * GET_VRING_BASE should answer once everything completed. */
int fe_avail_base(Fe *fe, int q);
/* Stop queue q (GET_VRING_BASE); returns the base or -errno. */
int fe_stop_queue(Fe *fe, int q);

#endif
