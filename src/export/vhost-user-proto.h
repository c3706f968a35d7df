/*
 * vhost-user protocol and virtio split-ring / virtio-blk definitions, plus the
 * pure (no I/O, no global state) pieces of the vhost-user-blk export that a
 * fuzzer can drive: message validation, the guest memory table's address
 * translation and the descriptor-chain walker.
 * References: QEMU docs/interop/vhost-user.rst, virtio 1.1 §2.6 and §5.2.
 */
#ifndef VDISK_EXPORT_VHOST_USER_PROTO_H
#define VDISK_EXPORT_VHOST_USER_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

/* ---- vhost-user messages ---- */
enum {
    VHU_GET_FEATURES = 1,
    VHU_SET_FEATURES = 2,
    VHU_SET_OWNER = 3,
    VHU_RESET_OWNER = 4,
    VHU_SET_MEM_TABLE = 5,
    VHU_SET_LOG_BASE = 6,
    VHU_SET_LOG_FD = 7,
    VHU_SET_VRING_NUM = 8,
    VHU_SET_VRING_ADDR = 9,
    VHU_SET_VRING_BASE = 10,
    VHU_GET_VRING_BASE = 11,
    VHU_SET_VRING_KICK = 12,
    VHU_SET_VRING_CALL = 13,
    VHU_SET_VRING_ERR = 14,
    VHU_GET_PROTOCOL_FEATURES = 15,
    VHU_SET_PROTOCOL_FEATURES = 16,
    VHU_GET_QUEUE_NUM = 17,
    VHU_SET_VRING_ENABLE = 18,
    VHU_GET_CONFIG = 24,
    VHU_SET_CONFIG = 25,
    VHU_GET_INFLIGHT_FD = 31,
    VHU_SET_INFLIGHT_FD = 32,
    VHU_RESET_DEVICE = 34,
    VHU_GET_MAX_MEM_SLOTS = 36,
};

#define VHU_VERSION             0x1u
#define VHU_FLAG_VERSION_MASK   0x3u
#define VHU_FLAG_REPLY          (1u << 2)
#define VHU_FLAG_NEED_REPLY     (1u << 3)

#define VHU_HDR_SIZE            12
#define VHU_MAX_PAYLOAD         4096      /* far above the largest message we accept */
#define VHU_MAX_FDS             8
#define VHU_MAX_REGIONS         8

#define VHU_PF_MQ               0
#define VHU_PF_REPLY_ACK        3
#define VHU_PF_CONFIG           9
#define VHU_PF_INFLIGHT_SHMFD   12
#define VHU_PF_RESET_DEVICE     13

#define VHU_VRING_IDX_MASK      0xffu
#define VHU_VRING_NOFD_MASK     (1u << 8)

/* ---- virtio feature bits ---- */
#define VIRTIO_BLK_F_SIZE_MAX       1
#define VIRTIO_BLK_F_SEG_MAX        2
#define VIRTIO_BLK_F_RO             5
#define VIRTIO_BLK_F_BLK_SIZE       6
#define VIRTIO_BLK_F_FLUSH          9
#define VIRTIO_BLK_F_TOPOLOGY       10
#define VIRTIO_BLK_F_CONFIG_WCE     11
#define VIRTIO_BLK_F_MQ             12
#define VIRTIO_BLK_F_DISCARD        13
#define VIRTIO_BLK_F_WRITE_ZEROES   14
#define VIRTIO_RING_F_INDIRECT_DESC 28
#define VIRTIO_RING_F_EVENT_IDX     29
#define VHOST_USER_F_PROTOCOL_FEATURES 30
#define VIRTIO_F_VERSION_1          32
#define VIRTIO_F_RING_PACKED        34

#define VIRTIO_BLK_T_IN             0
#define VIRTIO_BLK_T_OUT            1
#define VIRTIO_BLK_T_FLUSH          4
#define VIRTIO_BLK_T_GET_ID         8
#define VIRTIO_BLK_T_DISCARD        11
#define VIRTIO_BLK_T_WRITE_ZEROES   13
#define VIRTIO_BLK_S_OK             0
#define VIRTIO_BLK_S_IOERR          1
#define VIRTIO_BLK_S_UNSUPP         2
#define VIRTIO_BLK_ID_BYTES         20
#define VIRTIO_BLK_WZ_F_UNMAP       1u

#define VRING_DESC_F_NEXT           1
#define VRING_DESC_F_WRITE          2
#define VRING_DESC_F_INDIRECT       4
#define VRING_PACKED_DESC_F_AVAIL   (1u << 7)
#define VRING_PACKED_DESC_F_USED    (1u << 15)
#define VRING_PACKED_EVENT_ENABLE   0
#define VRING_PACKED_EVENT_DISABLE  1
#define VRING_PACKED_EVENT_DESC     2
#define VRING_USED_F_NO_NOTIFY      1
#define VRING_AVAIL_F_NO_INTERRUPT  1
#define VHU_MAX_QUEUE_SIZE          32768

typedef struct VringDesc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
} VringDesc;

/* Packed ring descriptor (virtio 1.1 §2.7.13). */
typedef struct VringPackedDesc {
    uint64_t addr;
    uint32_t len;
    uint16_t id;
    uint16_t flags;
} VringPackedDesc;

typedef struct VringUsedElem {
    uint32_t id;
    uint32_t len;
} VringUsedElem;

/* virtio-blk config space (virtio 1.1 §5.2.4), little-endian host assumed. */
typedef struct __attribute__((packed)) VirtioBlkConfig {
    uint64_t capacity;
    uint32_t size_max;
    uint32_t seg_max;
    uint16_t cylinders;
    uint8_t heads;
    uint8_t sectors;
    uint32_t blk_size;
    uint8_t physical_block_exp;
    uint8_t alignment_offset;
    uint16_t min_io_size;
    uint32_t opt_io_size;
    uint8_t wce;
    uint8_t unused0;
    uint16_t num_queues;
    uint32_t max_discard_sectors;
    uint32_t max_discard_seg;
    uint32_t discard_sector_alignment;
    uint32_t max_write_zeroes_sectors;
    uint32_t max_write_zeroes_seg;
    uint8_t write_zeroes_may_unmap;
    uint8_t unused1[3];
} VirtioBlkConfig;
#define VIRTIO_BLK_CONFIG_WCE_OFFSET 32

typedef struct __attribute__((packed)) VirtioBlkOutHdr {
    uint32_t type;
    uint32_t ioprio;
    uint64_t sector;
} VirtioBlkOutHdr;

typedef struct __attribute__((packed)) VirtioBlkDiscardWz {
    uint64_t sector;
    uint32_t num_sectors;
    uint32_t flags;
} VirtioBlkDiscardWz;

/* ---- message payloads ---- */
typedef struct VhuMemRegion {
    uint64_t guest_addr;
    uint64_t size;
    uint64_t user_addr;
    uint64_t mmap_offset;
} VhuMemRegion;

typedef struct VhuVringAddr {
    uint32_t index;
    uint32_t flags;
    uint64_t desc_user_addr;
    uint64_t used_user_addr;
    uint64_t avail_user_addr;
    uint64_t log_guest_addr;
} VhuVringAddr;

typedef struct VhuConfigHdr {
    uint32_t offset;
    uint32_t size;
    uint32_t flags;
} VhuConfigHdr;

typedef struct VhuInflight {
    uint64_t mmap_size;
    uint64_t mmap_offset;
    uint16_t num_queues;
    uint16_t queue_size;
} VhuInflight;

typedef struct VhuMsg {
    uint32_t request;
    uint32_t flags;
    uint32_t size;
    uint8_t payload[VHU_MAX_PAYLOAD];
    int fds[VHU_MAX_FDS];
    int nfds;
} VhuMsg;

/* Parsed and validated content of a message (what the server acts on). */
typedef struct VhuParsed {
    uint64_t u64;
    uint32_t index;          /* vring index (state, addr, fd messages) */
    uint32_t num;            /* vring state num */
    bool nofd;               /* KICK/CALL/ERR: no fd, polling mode */
    VhuVringAddr addr;
    uint32_t nregions;
    VhuMemRegion regions[VHU_MAX_REGIONS];
    VhuConfigHdr config;
    const uint8_t *config_data;
    VhuInflight inflight;
} VhuParsed;

/*
 * Validate msg (header already read, payload and fds attached) against the
 * layout its request type needs, and fill *p. Returns 0, or -EINVAL with a
 * message in err (what is wrong: request, field, value). Unknown requests
 * return -ENOTSUP. Does not check the number of queues (the caller does).
 */
int vhu_msg_parse(const VhuMsg *msg, VhuParsed *p, char *err, size_t errlen);
const char *vhu_request_name(uint32_t request);

/* ---- guest memory ---- */
typedef struct VhuMemMap {
    uint64_t guest_addr;
    uint64_t size;
    uint64_t user_addr;
    uint8_t *host;           /* mapping of [guest_addr, guest_addr + size) */
    void *mmap_base;         /* what to munmap */
    size_t mmap_len;
} VhuMemMap;

typedef struct VhuMem {
    int nregions;
    VhuMemMap regions[VHU_MAX_REGIONS];
} VhuMem;

/* Host pointer for [gpa, gpa + len) if it lies inside one region, else NULL. */
void *vhu_mem_gpa(const VhuMem *mem, uint64_t gpa, uint64_t len);
/* Same for front-end user addresses (vring addresses). */
void *vhu_mem_uva(const VhuMem *mem, uint64_t uva, uint64_t len);

/* ---- descriptor chains ---- */
#define VHU_MAX_SEGS 1026        /* seg_max (1024) + header + status */

typedef struct VhuChain {
    struct iovec out[VHU_MAX_SEGS];   /* device-readable, in order */
    int n_out;
    struct iovec in[VHU_MAX_SEGS];    /* device-writable, in order */
    int n_in;
    uint64_t out_len;
    uint64_t in_len;
} VhuChain;

/*
 * Walk the chain starting at head in a descriptor table of num entries
 * (desc is the table in guest memory, already bounds-checked for num
 * entries). Follows one level of indirect table when indirect is allowed.
 * Rejects (returns -EINVAL, reason in err): head or next out of range,
 * loops / chains longer than the table, readable after writable, addresses
 * outside every region, length overflow, nested or empty or misaligned
 * indirect tables, more than VHU_MAX_SEGS segments. Buffers crossing
 * regions are split. Returns 0.
 */
int vhu_chain_walk(const VhuMem *mem, const VringDesc *desc, uint32_t num, uint16_t head,
                   bool indirect, VhuChain *c, char *err, size_t errlen);

/*
 * Walk the packed-ring buffer whose first descriptor is at ring position
 * pos (its flags already seen available; the caller read them with acquire
 * semantics). Chained descriptors follow in ring order (wrapping); an
 * indirect descriptor's table holds the whole chain. On return *ndescs is
 * the number of ring entries the buffer takes (also on error, when known:
 * 0 if the chain does not end within the ring) and *id its buffer id (from
 * the last descriptor). Same checks as vhu_chain_walk. Returns 0 or -EINVAL.
 */
int vhu_packed_walk(const VhuMem *mem, const VringPackedDesc *ring, uint32_t num, uint16_t pos,
                    bool indirect, VhuChain *c, uint16_t *ndescs, uint16_t *id, char *err,
                    size_t errlen);

/* Event-index test (virtio 1.1 §2.6.7.2): notify if new_idx passed event. */
static inline bool vhu_need_event(uint16_t event, uint16_t new_idx, uint16_t old_idx)
{
    return (uint16_t)(new_idx - event - 1) < (uint16_t)(new_idx - old_idx);
}

/* ---- inflight tracking region (split rings), vhost-user.rst ---- */
typedef struct VhuInflightDesc {
    uint8_t inflight;
    uint8_t padding[5];
    uint16_t next;
    uint64_t counter;
} VhuInflightDesc;

typedef struct VhuInflightQueue {
    uint64_t features;
    uint16_t version;
    uint16_t desc_num;
    uint16_t last_batch_head;
    uint16_t used_idx;
    VhuInflightDesc desc[];
} VhuInflightQueue;

/* Bytes one queue's region takes (64-byte aligned so queues do not share lines). */
static inline uint64_t vhu_inflight_queue_bytes(uint16_t queue_size)
{
    uint64_t n = sizeof(VhuInflightQueue) + (uint64_t)queue_size * sizeof(VhuInflightDesc);
    return (n + 63) & ~(uint64_t)63;
}

#endif
