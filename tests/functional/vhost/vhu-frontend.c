/*
 * The test/bench vhost-user front-end: see vhu-frontend.h.
 */
#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "vhu-frontend.h"

#define FE_RING_AREA (1u << 20)
#define FE_SLOTS_OFF (16u << 20)
#define FE_SLOT_SIZE (4096u + FE_SLOT_DATA)
#define FE_MEM_SIZE (FE_SLOTS_OFF + 256ull * FE_SLOT_SIZE)

int fe_connect(Fe *fe, const char *path)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };

    if (strlen(path) >= sizeof(sa.sun_path)) {
        return -ENAMETOOLONG;
    }
    strcpy(sa.sun_path, path);
    for (int i = 0; i < 1000; i++) {
        fe->sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (connect(fe->sock, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
            return 0;
        }
        int err = errno;
        close(fe->sock);
        fe->sock = -1;
        if (err != ENOENT && err != ECONNREFUSED) {
            return -err;
        }
        usleep(10000);
    }
    return -ETIMEDOUT;
}

void fe_disconnect(Fe *fe)
{
    if (fe->sock >= 0) {
        close(fe->sock);
        fe->sock = -1;
    }
    for (int i = 0; i < fe->nq; i++) {
        if (fe->q[i].kick >= 0) {
            close(fe->q[i].kick);
        }
        if (fe->q[i].call >= 0) {
            close(fe->q[i].call);
        }
        fe->q[i].kick = fe->q[i].call = -1;
    }
}

static int fe_write_all(int fd, const void *buf, size_t len, const int *fds, int nfds)
{
    union {
        char buf[CMSG_SPACE(sizeof(int) * VHU_MAX_FDS)];
        struct cmsghdr align;
    } cbuf;
    struct iovec iov = { (void *)buf, len };
    struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };

    if (nfds > 0) {
        mh.msg_control = cbuf.buf;
        mh.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
        memcpy(CMSG_DATA(cm), fds, sizeof(int) * nfds);
    }
    ssize_t r = sendmsg(fd, &mh, MSG_NOSIGNAL);
    if (r < 0) {
        return -errno;
    }
    size_t done = r;
    while (done < len) {
        r = send(fd, (const char *)buf + done, len - done, MSG_NOSIGNAL);
        if (r < 0) {
            return -errno;
        }
        done += r;
    }
    return 0;
}

/* Receive exactly len bytes; the first fd that comes along goes to *fd. */
static int fe_read_all(int sock, void *buf, size_t len, int *fd)
{
    size_t done = 0;
    while (done < len) {
        union {
            char buf[CMSG_SPACE(sizeof(int) * VHU_MAX_FDS)];
            struct cmsghdr align;
        } cbuf;
        struct iovec iov = { (char *)buf + done, len - done };
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf.buf,
                             .msg_controllen = sizeof(cbuf.buf) };
        struct pollfd pfd = { sock, POLLIN, 0 };
        if (poll(&pfd, 1, 30000) != 1) {
            return -ETIMEDOUT;
        }
        ssize_t r = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
        if (r <= 0) {
            return r == 0 ? -EPIPE : -errno;
        }
        for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
            if (cm->cmsg_type == SCM_RIGHTS && fd && *fd < 0) {
                memcpy(fd, CMSG_DATA(cm), sizeof(int));
            }
        }
        done += r;
    }
    return 0;
}

static int fe_msg_fd(Fe *fe, uint32_t request, uint32_t flags, const void *payload,
                     uint32_t size, const int *fds, int nfds, void *reply, uint32_t *reply_len,
                     int *reply_fd)
{
    uint8_t buf[VHU_HDR_SIZE + VHU_MAX_PAYLOAD];
    uint32_t hdr[3] = { request, VHU_VERSION | flags, size };
    int ret;

    memcpy(buf, hdr, sizeof(hdr));
    if (size) {
        memcpy(buf + VHU_HDR_SIZE, payload, size);
    }
    if ((ret = fe_write_all(fe->sock, buf, VHU_HDR_SIZE + size, fds, nfds)) < 0) {
        return ret;
    }
    if (!reply) {
        return 0;
    }
    if ((ret = fe_read_all(fe->sock, hdr, sizeof(hdr), reply_fd)) < 0) {
        return ret;
    }
    if (hdr[0] != request || !(hdr[1] & VHU_FLAG_REPLY) || hdr[2] > VHU_MAX_PAYLOAD) {
        fprintf(stderr, "fe: bad reply to %u: request %u flags 0x%x size %u\n", request, hdr[0],
                hdr[1], hdr[2]);
        return -EPROTO;
    }
    if ((ret = fe_read_all(fe->sock, buf, hdr[2], reply_fd)) < 0) {
        return ret;
    }
    memcpy(reply, buf, (hdr[2] < *reply_len ? hdr[2] : *reply_len));
    *reply_len = hdr[2];
    return 0;
}

int fe_msg(Fe *fe, uint32_t request, uint32_t flags, const void *payload, uint32_t size,
           const int *fds, int nfds, void *reply, uint32_t *reply_len)
{
    return fe_msg_fd(fe, request, flags, payload, size, fds, nfds, reply, reply_len, NULL);
}

int fe_get_u64(Fe *fe, uint32_t request, uint64_t *v)
{
    uint32_t len = 8;
    int ret = fe_msg(fe, request, 0, NULL, 0, NULL, 0, v, &len);
    return ret < 0 ? ret : len == 8 ? 0 : -EPROTO;
}

/* Send a message; with ack (REPLY_ACK negotiated) wait for its result. */
static int fe_send_ack(Fe *fe, uint32_t request, const void *payload, uint32_t size,
                       const int *fds, int nfds, bool ack)
{
    bool can = fe->pfeatures & (1ull << VHU_PF_REPLY_ACK);
    if (!ack || !can) {
        return fe_msg(fe, request, 0, payload, size, fds, nfds, NULL, NULL);
    }
    uint64_t v = 0;
    uint32_t len = 8;
    int ret = fe_msg(fe, request, VHU_FLAG_NEED_REPLY, payload, size, fds, nfds, &v, &len);
    return ret < 0 ? ret : v == 0 ? 0 : -EIO;
}

int fe_set_u64(Fe *fe, uint32_t request, uint64_t v, bool ack)
{
    return fe_send_ack(fe, request, &v, 8, NULL, 0, ack);
}

static int fe_vring_state(Fe *fe, uint32_t request, uint32_t index, uint32_t num)
{
    uint32_t st[2] = { index, num };
    return fe_send_ack(fe, request, st, 8, NULL, 0, true);
}

static int fe_vring_fd(Fe *fe, uint32_t request, uint32_t index, int fd)
{
    uint64_t v = index;
    return fe_send_ack(fe, request, &v, 8, &fd, 1, true);
}

static int fe_alloc_mem(Fe *fe)
{
    if (fe->mem) {
        return 0;
    }
    fe->mem_size = FE_MEM_SIZE;
    fe->memfd = memfd_create("vhu-fe-guest", MFD_CLOEXEC);
    if (fe->memfd < 0 || ftruncate(fe->memfd, (off_t)fe->mem_size) < 0) {
        return -errno;
    }
    fe->mem = mmap(NULL, fe->mem_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE,
                   fe->memfd, 0);
    return fe->mem == MAP_FAILED ? -errno : 0;
}

static uint64_t fe_gpa(Fe *fe, const void *p)
{
    return FE_GPA_BASE + (uint64_t)((const uint8_t *)p - fe->mem);
}

static uint64_t fe_uva(Fe *fe, const void *p)
{
    return (uint64_t)(uintptr_t)p;
}

/* The base a reconnecting front-end gives: after a clean stop what it
 * reaped; after a server crash (reuse_inflight) the used index in memory,
 * as QEMU does when it could not ask GET_VRING_BASE. */
static uint16_t fe_vring_base(Fe *fe, int i, const FeOpts *o)
{
    FeQueue *q = &fe->q[i];
    if (o->packed) {
        /* after a clean stop every request completed: the next position */
        return (uint16_t)(q->last_used | (q->used_wrap << 15));
    }
    if (o->reuse_inflight) {
        return __atomic_load_n(&q->used[1], __ATOMIC_ACQUIRE);
    }
    return q->last_used;
}

/* SET_VRING_ADDR's payload: the struct's fields in order, host byte order. */
void fe_vring_addr_encode(const VhuVringAddr *a, uint8_t out[40])
{
    memcpy(out, &a->index, 4);
    memcpy(out + 4, &a->flags, 4);
    memcpy(out + 8, &a->desc_user_addr, 8);
    memcpy(out + 16, &a->used_user_addr, 8);
    memcpy(out + 24, &a->avail_user_addr, 8);
    memcpy(out + 32, &a->log_guest_addr, 8);
}

int fe_setup(Fe *fe, const FeOpts *o)
{
    int ret;
    uint64_t f, pf, qn;

    if (o->nq > FE_MAX_QUEUES || o->nq * o->depth > 256 ||
        (!o->indirect && o->depth * 3 > o->qsize) || (o->indirect && o->depth > o->qsize)) {
        return -EINVAL;
    }
    if ((ret = fe_alloc_mem(fe)) < 0) {
        return ret;
    }
    fe->nq = o->nq;
    fe->indirect = o->indirect;
    fe->event_idx = o->event_idx;
    if ((ret = fe_msg(fe, VHU_SET_OWNER, 0, NULL, 0, NULL, 0, NULL, NULL)) < 0 ||
        (ret = fe_get_u64(fe, VHU_GET_FEATURES, &f)) < 0) {
        return ret;
    }
    fe->offered = f;
    uint64_t want = f & ~((1ull << VIRTIO_RING_F_EVENT_IDX) | (1ull << VIRTIO_RING_F_INDIRECT_DESC));
    if (o->event_idx) {
        want |= f & (1ull << VIRTIO_RING_F_EVENT_IDX);
    }
    if (o->indirect) {
        want |= f & (1ull << VIRTIO_RING_F_INDIRECT_DESC);
    }
    want &= ~(1ull << VIRTIO_F_RING_PACKED);
    if (o->packed) {
        if (!(f & (1ull << VIRTIO_F_RING_PACKED))) {
            return -ENOTSUP;
        }
        want |= 1ull << VIRTIO_F_RING_PACKED;
    }
    fe->packed = o->packed;
    if (!(f & (1ull << VHOST_USER_F_PROTOCOL_FEATURES))) {
        return -ENOTSUP;
    }
    if ((ret = fe_get_u64(fe, VHU_GET_PROTOCOL_FEATURES, &pf)) < 0) {
        return ret;
    }
    pf &= (1ull << VHU_PF_MQ) | (1ull << VHU_PF_REPLY_ACK) | (1ull << VHU_PF_CONFIG) |
          (1ull << VHU_PF_INFLIGHT_SHMFD);
    if ((ret = fe_set_u64(fe, VHU_SET_PROTOCOL_FEATURES, pf, false)) < 0) {
        return ret;
    }
    fe->pfeatures = pf;
    if ((ret = fe_get_u64(fe, VHU_GET_QUEUE_NUM, &qn)) < 0) {
        return ret;
    }
    if ((int)qn < o->nq) {
        fprintf(stderr, "fe: server has %llu queues, %d wanted\n", (unsigned long long)qn, o->nq);
        return -EINVAL;
    }
    uint8_t cfgreq[12 + sizeof(VirtioBlkConfig)] = { 0 };
    uint32_t cfgsize = sizeof(VirtioBlkConfig), len = sizeof(cfgreq);
    memcpy(cfgreq + 4, &cfgsize, 4);
    if ((ret = fe_msg(fe, VHU_GET_CONFIG, 0, cfgreq, sizeof(cfgreq), NULL, 0, cfgreq, &len)) < 0) {
        return ret;
    }
    memcpy(&fe->config, cfgreq + 12, sizeof(fe->config));
    if ((ret = fe_set_u64(fe, VHU_SET_FEATURES, want, true)) < 0) {
        return ret;
    }
    fe->features = want;
    if (o->inflight) {
        if (!(pf & (1ull << VHU_PF_INFLIGHT_SHMFD))) {
            return -ENOTSUP;
        }
        uint8_t req[24] = { 0 };
        uint16_t nq16 = (uint16_t)o->nq, qs16 = (uint16_t)o->qsize;
        memcpy(req + 16, &nq16, 2);
        memcpy(req + 18, &qs16, 2);
        if (!o->reuse_inflight || fe->inflight_fd <= 0) {
            uint8_t rep[24];
            uint32_t rl = sizeof(rep);
            int fd = -1;
            if ((ret = fe_msg_fd(fe, VHU_GET_INFLIGHT_FD, 0, req, sizeof(req), NULL, 0, rep, &rl,
                                 &fd)) < 0) {
                return ret;
            }
            if (fd < 0) {
                return -EPROTO;
            }
            fe->inflight_fd = fd;
            memcpy(&fe->inflight_size, rep, 8);
            fe->inflight = mmap(NULL, fe->inflight_size, PROT_READ | PROT_WRITE, MAP_SHARED,
                                fd, 0);
            if (fe->inflight == MAP_FAILED) {
                return -errno;
            }
        }
        memcpy(req, &fe->inflight_size, 8);
        if ((ret = fe_send_ack(fe, VHU_SET_INFLIGHT_FD, req, sizeof(req), &fe->inflight_fd, 1,
                               true)) < 0) {
            return ret;
        }
    }
    uint8_t mt[8 + 32] = { 0 };
    uint32_t one = 1;
    VhuMemRegion r = { FE_GPA_BASE, fe->mem_size, fe_uva(fe, fe->mem), 0 };
    memcpy(mt, &one, 4);
    memcpy(mt + 8, &r, 32);
    if ((ret = fe_send_ack(fe, VHU_SET_MEM_TABLE, mt, sizeof(mt), &fe->memfd, 1, true)) < 0) {
        return ret;
    }
    for (int i = 0; i < o->nq; i++) {
        FeQueue *q = &fe->q[i];
        uint8_t *area = fe->mem + (size_t)i * FE_RING_AREA;
        bool keep = q->num == o->qsize && q->desc;   /* reconnect: keep ring contents */
        q->num = (uint16_t)o->qsize;
        q->depth = o->depth;
        q->desc = (VringDesc *)area;
        q->avail = (uint16_t *)(area + 16 * q->num);
        q->used = (uint16_t *)(area + ((16 * q->num + 6 + 2 * q->num + 4095) & ~4095u));
        if (o->packed) {
            q->avail = (uint16_t *)(area + 16 * q->num);          /* driver event area */
            q->used = (uint16_t *)(area + 16 * q->num + 64);      /* device event area */
        }
        q->slots = fe->mem + FE_SLOTS_OFF + (size_t)i * o->depth * FE_SLOT_SIZE;
        if (!keep) {
            memset(area, 0, FE_RING_AREA);
            q->avail_idx = q->last_used = 0;
            q->avail_wrap = q->used_wrap = true;
        }
        q->kick_idx = q->avail_idx;
        q->kick = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        q->call = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        VhuVringAddr a = { (uint32_t)i, 0, fe_uva(fe, q->desc), fe_uva(fe, q->used),
                           fe_uva(fe, q->avail), 0 };
        uint8_t ab[40];
        fe_vring_addr_encode(&a, ab);
        if ((ret = fe_vring_state(fe, VHU_SET_VRING_NUM, i, q->num)) < 0 ||
            (ret = fe_vring_state(fe, VHU_SET_VRING_BASE, i, fe_vring_base(fe, i, o))) < 0 ||
            (ret = fe_send_ack(fe, VHU_SET_VRING_ADDR, ab, 40, NULL, 0, true)) < 0 ||
            (ret = fe_vring_fd(fe, VHU_SET_VRING_CALL, i, q->call)) < 0 ||
            (ret = fe_vring_fd(fe, VHU_SET_VRING_KICK, i, q->kick)) < 0 ||
            (ret = fe_vring_state(fe, VHU_SET_VRING_ENABLE, i, 1)) < 0) {
            return ret;
        }
    }
    return 0;
}

int fe_stop_queue(Fe *fe, int qi)
{
    uint32_t st[2] = { (uint32_t)qi, 0 }, rep[2];
    uint32_t len = sizeof(rep);
    int ret = fe_msg(fe, VHU_GET_VRING_BASE, 0, st, 8, NULL, 0, rep, &len);
    return ret < 0 ? ret : (int)rep[1];
}

static uint8_t *fe_slot(Fe *fe, int qi, int slot)
{
    return fe->q[qi].slots + (size_t)slot * FE_SLOT_SIZE;
}

uint8_t *fe_slot_data(Fe *fe, int qi, int slot)
{
    return fe_slot(fe, qi, slot) + 4096;
}

uint64_t fe_slot_data_gpa(Fe *fe, int qi, int slot)
{
    return fe_gpa(fe, fe_slot_data(fe, qi, slot));
}

uint8_t fe_slot_status(Fe *fe, int qi, int slot)
{
    return fe_slot(fe, qi, slot)[16];
}

void fe_post_head(Fe *fe, int qi, uint16_t head)
{
    FeQueue *q = &fe->q[qi];
    q->avail[2 + q->avail_idx % q->num] = head;
    q->avail_idx++;
    __atomic_store_n(&q->avail[1], q->avail_idx, __ATOMIC_RELEASE);
}

int fe_avail_base(Fe *fe, int qi)
{
    FeQueue *q = &fe->q[qi];
    return fe->packed ? (int)(q->avail_idx | (q->avail_wrap << 15)) : q->avail_idx;
}

/* Packed ring: the chain d[0..n) goes to consecutive ring positions, the
 * first one's flags written last. */
void fe_post_packed(Fe *fe, int qi, int slot, VringDesc *d, int n)
{
    FeQueue *q = &fe->q[qi];
    VringPackedDesc *ring = (VringPackedDesc *)q->desc;
    uint16_t head_pos = q->avail_idx, head_flags = 0;

    for (int i = 0; i < n; i++) {
        uint16_t flags = d[i].flags & (VRING_DESC_F_NEXT | VRING_DESC_F_WRITE |
                                        VRING_DESC_F_INDIRECT);
        flags |= q->avail_wrap ? VRING_PACKED_DESC_F_AVAIL : VRING_PACKED_DESC_F_USED;
        VringPackedDesc *p = &ring[q->avail_idx];
        p->addr = d[i].addr;
        p->len = d[i].len;
        p->id = (uint16_t)slot;
        if (i == 0) {
            head_flags = flags;
        } else {
            __atomic_store_n(&p->flags, flags, __ATOMIC_RELEASE);
        }
        if (++q->avail_idx == q->num) {
            q->avail_idx = 0;
            q->avail_wrap = !q->avail_wrap;
        }
    }
    q->ndescs[slot] = (uint8_t)n;
    __atomic_store_n(&ring[head_pos].flags, head_flags, __ATOMIC_RELEASE);
}

void fe_post(Fe *fe, int qi, int slot, uint32_t type, uint64_t sector, uint32_t len)
{
    FeQueue *q = &fe->q[qi];
    uint8_t *s = fe_slot(fe, qi, slot);
    VirtioBlkOutHdr h = { type, 0, sector };
    bool dev_writes = type == VIRTIO_BLK_T_IN || type == VIRTIO_BLK_T_GET_ID;
    VringDesc d[3];
    int n = 0;

    memcpy(s, &h, sizeof(h));
    s[16] = 0xff;
    d[n++] = (VringDesc){ fe_gpa(fe, s), 16, VRING_DESC_F_NEXT, 0 };
    if (len) {
        d[n++] = (VringDesc){ fe_gpa(fe, s + 4096), len,
                              VRING_DESC_F_NEXT | (dev_writes ? VRING_DESC_F_WRITE : 0), 0 };
    }
    d[n++] = (VringDesc){ fe_gpa(fe, s + 16), 1, VRING_DESC_F_WRITE, 0 };
    uint16_t head;
    if (fe->packed) {
        if (fe->indirect) {
            VringPackedDesc *t = (VringPackedDesc *)(s + 64);
            for (int i = 0; i < n; i++) {
                t[i] = (VringPackedDesc){ d[i].addr, d[i].len, 0,
                                          (uint16_t)(d[i].flags & VRING_DESC_F_WRITE) };
            }
            VringDesc ind = { fe_gpa(fe, t), (uint32_t)(16 * n), VRING_DESC_F_INDIRECT, 0 };
            fe_post_packed(fe, qi, slot, &ind, 1);
        } else {
            fe_post_packed(fe, qi, slot, d, n);
        }
        return;
    }
    if (fe->indirect) {
        VringDesc *t = (VringDesc *)(s + 64);
        for (int i = 0; i < n; i++) {
            d[i].next = (uint16_t)(i + 1);
            t[i] = d[i];
        }
        head = (uint16_t)slot;
        q->desc[head] = (VringDesc){ fe_gpa(fe, t), (uint32_t)(16 * n), VRING_DESC_F_INDIRECT, 0 };
    } else {
        head = (uint16_t)(3 * slot);
        for (int i = 0; i < n; i++) {
            d[i].next = (uint16_t)(head + i + 1);
            q->desc[head + i] = d[i];
        }
    }
    fe_post_head(fe, qi, head);
}

void fe_kick(Fe *fe, int qi)
{
    FeQueue *q = &fe->q[qi];
    uint64_t one = 1;

    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (fe->packed) {
        /* device event suppression: flags 1 = no kicks wanted */
        if (__atomic_load_n(&q->used[1], __ATOMIC_ACQUIRE) == VRING_PACKED_EVENT_DISABLE) {
            return;
        }
    } else if (fe->event_idx) {
        /* kick only if the entries posted since the last kick decision
         * passed avail_event (vring_need_event, as a Linux driver does) */
        uint16_t ev = __atomic_load_n((uint16_t *)((uint8_t *)q->used + 4 + 8 * q->num),
                                      __ATOMIC_RELAXED);
        uint16_t new_idx = q->avail_idx, old_idx = q->kick_idx;
        q->kick_idx = new_idx;
        if ((uint16_t)(new_idx - ev - 1) >= (uint16_t)(new_idx - old_idx)) {
            return;
        }
    } else if (__atomic_load_n(&q->used[0], __ATOMIC_RELAXED) & VRING_USED_F_NO_NOTIFY) {
        return;
    }
    q->kicks++;
    if (write(q->kick, &one, 8) != 8) {
        perror("fe: kick");
    }
}

uint64_t fe_call_count(Fe *fe, int qi)
{
    uint64_t v = 0;
    if (read(fe->q[qi].call, &v, 8) != 8) {
        return 0;
    }
    return v;
}

static bool fe_used_ready(Fe *fe, FeQueue *q)
{
    if (fe->packed) {
        VringPackedDesc *d = &((VringPackedDesc *)q->desc)[q->last_used];
        uint16_t flags = __atomic_load_n(&d->flags, __ATOMIC_ACQUIRE);
        return (bool)(flags & VRING_PACKED_DESC_F_AVAIL) == q->used_wrap &&
               (bool)(flags & VRING_PACKED_DESC_F_USED) == q->used_wrap;
    }
    return __atomic_load_n(&q->used[1], __ATOMIC_ACQUIRE) != q->last_used;
}

/* Busy-poll the used ring for up to fe->reap_spin_ns: true once it has an
 * entry. It yields the CPU between looks: on a machine with fewer free
 * cores than spinning threads the server runs instead of waiting for our
 * time slice to end. */
static bool fe_spin(Fe *fe, FeQueue *q)
{
    struct timespec ts;
    int64_t end = 0;

    for (unsigned i = 0;; i++) {
        if (fe_used_ready(fe, q)) {
            return true;
        }
        if (i % 8 == 0) {
            clock_gettime(CLOCK_MONOTONIC, &ts);
            int64_t now = ts.tv_sec * 1000000000LL + ts.tv_nsec;
            if (i == 0) {
                end = now + fe->reap_spin_ns;
            } else if (now >= end) {
                return false;
            }
        }
        sched_yield();
    }
}

int fe_reap(Fe *fe, int qi, int *slots, uint32_t *lens, int max, int timeout_ms)
{
    FeQueue *q = &fe->q[qi];
    int n = 0;

    while (fe->packed) {
        VringPackedDesc *ring = (VringPackedDesc *)q->desc;
        while (n < max) {
            VringPackedDesc *d = &ring[q->last_used];
            uint16_t flags = __atomic_load_n(&d->flags, __ATOMIC_ACQUIRE);
            bool a = flags & VRING_PACKED_DESC_F_AVAIL, u = flags & VRING_PACKED_DESC_F_USED;
            if (a != q->used_wrap || u != q->used_wrap) {
                break;
            }
            slots[n] = d->id;
            lens[n] = d->len;
            q->last_used += d->id < 256 ? q->ndescs[d->id] : 1;
            if (q->last_used >= q->num) {
                q->last_used -= q->num;
                q->used_wrap = !q->used_wrap;
            }
            n++;
        }
        if (n > 0 || timeout_ms == 0) {
            return n;
        }
        if (fe->reap_spin_ns > 0 && fe_spin(fe, q)) {
            continue;
        }
        struct pollfd pfd[2] = { { q->call, POLLIN, 0 }, { fe->sock, POLLIN, 0 } };
        if (poll(pfd, fe->sock >= 0 ? 2 : 1, timeout_ms) == 0) {
            return -ETIMEDOUT;
        }
        if (fe->sock >= 0 && (pfd[1].revents & (POLLIN | POLLHUP))) {
            char c;
            if (recv(fe->sock, &c, 1, MSG_PEEK | MSG_DONTWAIT) == 0) {
                return -EPIPE;
            }
        }
        fe_call_count(fe, qi);
    }
    for (;;) {
        uint16_t used_idx = __atomic_load_n(&q->used[1], __ATOMIC_ACQUIRE);
        while (q->last_used != used_idx && n < max) {
            VringUsedElem e;
            memcpy(&e, (uint8_t *)q->used + 4 + 8 * (q->last_used % q->num), sizeof(e));
            slots[n] = fe->indirect ? (int)e.id : (int)e.id / 3;
            lens[n] = e.len;
            n++;
            q->last_used++;
        }
        if (n > 0 && fe->reap_spin_ns > 0) {
            return n;               /* polling: no call wanted yet */
        }
        if (fe->reap_spin_ns > 0 && timeout_ms != 0 && fe_spin(fe, q)) {
            continue;
        }
        if (fe->event_idx) {
            /* used_event: interrupt us at the next completion */
            __atomic_store_n(&q->avail[2 + q->num], q->last_used, __ATOMIC_RELEASE);
            __atomic_thread_fence(__ATOMIC_SEQ_CST);
            if (__atomic_load_n(&q->used[1], __ATOMIC_ACQUIRE) != q->last_used && n < max) {
                continue;
            }
        }
        if (n > 0 || timeout_ms == 0) {
            return n;
        }
        struct pollfd pfd[2] = { { q->call, POLLIN, 0 }, { fe->sock, POLLIN, 0 } };
        int r = poll(pfd, fe->sock >= 0 ? 2 : 1, timeout_ms);
        if (r == 0) {
            return -ETIMEDOUT;
        }
        if (fe->sock >= 0 && (pfd[1].revents & (POLLIN | POLLHUP))) {
            char c;
            if (recv(fe->sock, &c, 1, MSG_PEEK | MSG_DONTWAIT) == 0 &&
                __atomic_load_n(&q->used[1], __ATOMIC_ACQUIRE) == q->last_used) {
                return -EPIPE;          /* the server closed the connection */
            }
        }
        fe_call_count(fe, qi);
    }
}

int fe_request(Fe *fe, int qi, uint32_t type, uint64_t sector, void *buf, uint32_t len)
{
    int slot;
    uint32_t ulen;

    if (len > FE_SLOT_DATA) {
        return -EINVAL;
    }
    if (type != VIRTIO_BLK_T_IN && type != VIRTIO_BLK_T_GET_ID && len) {
        memcpy(fe_slot_data(fe, qi, 0), buf, len);
    }
    fe_post(fe, qi, 0, type, sector, len);
    fe_kick(fe, qi);
    int n = fe_reap(fe, qi, &slot, &ulen, 1, 10000);
    if (n < 0) {
        return n;
    }
    if (slot != 0) {
        return -EPROTO;
    }
    if ((type == VIRTIO_BLK_T_IN || type == VIRTIO_BLK_T_GET_ID) && len) {
        memcpy(buf, fe_slot_data(fe, qi, 0), len);
    }
    return fe_slot_status(fe, qi, 0);
}
