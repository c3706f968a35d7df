/*
 * vhost-user message validation, guest address translation and the split
 * virtqueue descriptor walker: everything the server reads from an
 * untrusted front-end goes through here first (and the fuzzer drives it).
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "export/vhost-user-proto.h"

#define VHU_ERR(...) (snprintf(err, errlen, __VA_ARGS__), -EINVAL)

const char *vhu_request_name(uint32_t request)
{
    static const char *const names[] = {
        [VHU_GET_FEATURES] = "GET_FEATURES", [VHU_SET_FEATURES] = "SET_FEATURES",
        [VHU_SET_OWNER] = "SET_OWNER", [VHU_RESET_OWNER] = "RESET_OWNER",
        [VHU_SET_MEM_TABLE] = "SET_MEM_TABLE", [VHU_SET_LOG_BASE] = "SET_LOG_BASE",
        [VHU_SET_LOG_FD] = "SET_LOG_FD", [VHU_SET_VRING_NUM] = "SET_VRING_NUM",
        [VHU_SET_VRING_ADDR] = "SET_VRING_ADDR", [VHU_SET_VRING_BASE] = "SET_VRING_BASE",
        [VHU_GET_VRING_BASE] = "GET_VRING_BASE", [VHU_SET_VRING_KICK] = "SET_VRING_KICK",
        [VHU_SET_VRING_CALL] = "SET_VRING_CALL", [VHU_SET_VRING_ERR] = "SET_VRING_ERR",
        [VHU_GET_PROTOCOL_FEATURES] = "GET_PROTOCOL_FEATURES",
        [VHU_SET_PROTOCOL_FEATURES] = "SET_PROTOCOL_FEATURES",
        [VHU_GET_QUEUE_NUM] = "GET_QUEUE_NUM", [VHU_SET_VRING_ENABLE] = "SET_VRING_ENABLE",
        [VHU_GET_CONFIG] = "GET_CONFIG", [VHU_SET_CONFIG] = "SET_CONFIG",
        [VHU_GET_INFLIGHT_FD] = "GET_INFLIGHT_FD", [VHU_SET_INFLIGHT_FD] = "SET_INFLIGHT_FD",
        [VHU_RESET_DEVICE] = "RESET_DEVICE", [VHU_GET_MAX_MEM_SLOTS] = "GET_MAX_MEM_SLOTS",
    };
    if (request < sizeof(names) / sizeof(names[0]) && names[request]) {
        return names[request];
    }
    return "unknown";
}

static int need_size(const VhuMsg *m, uint32_t size, char *err, size_t errlen)
{
    if (m->size < size) {
        return VHU_ERR("%s: payload is %u bytes, needs %u", vhu_request_name(m->request),
                       m->size, size);
    }
    return 0;
}

static int need_fds(const VhuMsg *m, int n, char *err, size_t errlen)
{
    if (m->nfds != n) {
        return VHU_ERR("%s: %d file descriptors attached, needs %d",
                       vhu_request_name(m->request), m->nfds, n);
    }
    return 0;
}

int vhu_msg_parse(const VhuMsg *m, VhuParsed *p, char *err, size_t errlen)
{
    const uint8_t *d = m->payload;
    int ret;

    memset(p, 0, sizeof(*p));
    if ((m->flags & VHU_FLAG_VERSION_MASK) != VHU_VERSION) {
        return VHU_ERR("%s: protocol version %u, expected %u", vhu_request_name(m->request),
                       m->flags & VHU_FLAG_VERSION_MASK, VHU_VERSION);
    }
    if (m->size > VHU_MAX_PAYLOAD) {
        return VHU_ERR("%s: payload size %u exceeds %u", vhu_request_name(m->request), m->size,
                       VHU_MAX_PAYLOAD);
    }
    switch (m->request) {
    case VHU_GET_FEATURES:
    case VHU_GET_PROTOCOL_FEATURES:
    case VHU_SET_OWNER:
    case VHU_RESET_OWNER:
    case VHU_RESET_DEVICE:
    case VHU_GET_QUEUE_NUM:
    case VHU_GET_MAX_MEM_SLOTS:
        return need_fds(m, 0, err, errlen);
    case VHU_SET_FEATURES:
    case VHU_SET_PROTOCOL_FEATURES:
        if ((ret = need_size(m, 8, err, errlen)) < 0 || (ret = need_fds(m, 0, err, errlen)) < 0) {
            return ret;
        }
        memcpy(&p->u64, d, 8);
        return 0;
    case VHU_SET_VRING_NUM:
    case VHU_SET_VRING_BASE:
    case VHU_GET_VRING_BASE:
    case VHU_SET_VRING_ENABLE:
        if ((ret = need_size(m, 8, err, errlen)) < 0 || (ret = need_fds(m, 0, err, errlen)) < 0) {
            return ret;
        }
        memcpy(&p->index, d, 4);
        memcpy(&p->num, d + 4, 4);
        return 0;
    case VHU_SET_VRING_ADDR:
        if ((ret = need_size(m, 40, err, errlen)) < 0 || (ret = need_fds(m, 0, err, errlen)) < 0) {
            return ret;
        }
        memcpy(&p->addr.index, d, 4);
        memcpy(&p->addr.flags, d + 4, 4);
        memcpy(&p->addr.desc_user_addr, d + 8, 8);
        memcpy(&p->addr.used_user_addr, d + 16, 8);
        memcpy(&p->addr.avail_user_addr, d + 24, 8);
        memcpy(&p->addr.log_guest_addr, d + 32, 8);
        p->index = p->addr.index;
        return 0;
    case VHU_SET_VRING_KICK:
    case VHU_SET_VRING_CALL:
    case VHU_SET_VRING_ERR:
        if ((ret = need_size(m, 8, err, errlen)) < 0) {
            return ret;
        }
        memcpy(&p->u64, d, 8);
        p->index = (uint32_t)(p->u64 & VHU_VRING_IDX_MASK);
        p->nofd = (p->u64 & VHU_VRING_NOFD_MASK) != 0;
        return need_fds(m, p->nofd ? 0 : 1, err, errlen);
    case VHU_SET_MEM_TABLE:
        if ((ret = need_size(m, 8, err, errlen)) < 0) {
            return ret;
        }
        memcpy(&p->nregions, d, 4);
        if (p->nregions == 0 || p->nregions > VHU_MAX_REGIONS) {
            return VHU_ERR("SET_MEM_TABLE: %u regions (1 to %d allowed)", p->nregions,
                           VHU_MAX_REGIONS);
        }
        if ((ret = need_size(m, 8 + 32 * p->nregions, err, errlen)) < 0 ||
            (ret = need_fds(m, (int)p->nregions, err, errlen)) < 0) {
            return ret;
        }
        for (uint32_t i = 0; i < p->nregions; i++) {
            VhuMemRegion *r = &p->regions[i];
            memcpy(r, d + 8 + 32 * i, 32);
            if (r->size == 0 || r->guest_addr + r->size < r->guest_addr ||
                r->user_addr + r->size < r->user_addr ||
                r->mmap_offset + r->size < r->mmap_offset) {
                return VHU_ERR("SET_MEM_TABLE: region %u (guest 0x%llx size 0x%llx user 0x%llx "
                               "offset 0x%llx) is empty or wraps", i,
                               (unsigned long long)r->guest_addr, (unsigned long long)r->size,
                               (unsigned long long)r->user_addr,
                               (unsigned long long)r->mmap_offset);
            }
            for (uint32_t j = 0; j < i; j++) {
                const VhuMemRegion *o = &p->regions[j];
                if (r->guest_addr < o->guest_addr + o->size &&
                    o->guest_addr < r->guest_addr + r->size) {
                    return VHU_ERR("SET_MEM_TABLE: regions %u and %u overlap in guest memory",
                                   j, i);
                }
            }
        }
        return 0;
    case VHU_GET_CONFIG:
    case VHU_SET_CONFIG:
        if ((ret = need_size(m, 12, err, errlen)) < 0 || (ret = need_fds(m, 0, err, errlen)) < 0) {
            return ret;
        }
        memcpy(&p->config, d, 12);
        if (p->config.size > 256 || p->config.offset > 256 ||
            p->config.offset + p->config.size > 256) {
            return VHU_ERR("%s: offset %u size %u beyond the 256-byte config space",
                           vhu_request_name(m->request), p->config.offset, p->config.size);
        }
        if ((ret = need_size(m, 12 + p->config.size, err, errlen)) < 0) {
            return ret;
        }
        p->config_data = d + 12;
        return 0;
    case VHU_GET_INFLIGHT_FD:
    case VHU_SET_INFLIGHT_FD:
        if ((ret = need_size(m, 20, err, errlen)) < 0 ||
            (ret = need_fds(m, m->request == VHU_SET_INFLIGHT_FD ? 1 : 0, err, errlen)) < 0) {
            return ret;
        }
        memcpy(&p->inflight.mmap_size, d, 8);
        memcpy(&p->inflight.mmap_offset, d + 8, 8);
        memcpy(&p->inflight.num_queues, d + 16, 2);
        memcpy(&p->inflight.queue_size, d + 18, 2);
        if (p->inflight.num_queues == 0 || p->inflight.queue_size == 0 ||
            p->inflight.queue_size > VHU_MAX_QUEUE_SIZE) {
            return VHU_ERR("%s: %u queues of %u entries", vhu_request_name(m->request),
                           p->inflight.num_queues, p->inflight.queue_size);
        }
        return 0;
    default:
        snprintf(err, errlen, "request %u (%s) is not supported", m->request,
                 vhu_request_name(m->request));
        return -ENOTSUP;
    }
}

static void *mem_lookup(const VhuMem *mem, uint64_t addr, uint64_t len, bool user)
{
    if (addr + len < addr) {
        return NULL;
    }
    for (int i = 0; i < mem->nregions; i++) {
        const VhuMemMap *r = &mem->regions[i];
        uint64_t base = user ? r->user_addr : r->guest_addr;
        if (addr >= base && addr - base < r->size && len <= r->size - (addr - base)) {
            return r->host + (addr - base);
        }
    }
    return NULL;
}

void *vhu_mem_gpa(const VhuMem *mem, uint64_t gpa, uint64_t len)
{
    return mem_lookup(mem, gpa, len, false);
}

void *vhu_mem_uva(const VhuMem *mem, uint64_t uva, uint64_t len)
{
    return mem_lookup(mem, uva, len, true);
}

/* Append [gpa, gpa + len) to c, split at region boundaries. */
static int chain_add(const VhuMem *mem, VhuChain *c, uint64_t gpa, uint32_t len, bool write,
                     char *err, size_t errlen)
{
    if (gpa + len < gpa) {
        return VHU_ERR("descriptor address 0x%llx + length %u wraps",
                       (unsigned long long)gpa, len);
    }
    if (!write && c->n_in > 0) {
        return VHU_ERR("device-readable descriptor after a device-writable one");
    }
    while (len > 0) {
        const VhuMemMap *r = NULL;
        for (int i = 0; i < mem->nregions; i++) {
            if (gpa >= mem->regions[i].guest_addr &&
                gpa - mem->regions[i].guest_addr < mem->regions[i].size) {
                r = &mem->regions[i];
                break;
            }
        }
        if (!r) {
            return VHU_ERR("descriptor address 0x%llx (length %u) is outside guest memory",
                           (unsigned long long)gpa, len);
        }
        uint64_t avail = r->size - (gpa - r->guest_addr);
        uint32_t n = avail < len ? (uint32_t)avail : len;
        struct iovec *iov;
        if (write) {
            if (c->n_in >= VHU_MAX_SEGS) {
                return VHU_ERR("more than %d segments", VHU_MAX_SEGS);
            }
            iov = &c->in[c->n_in++];
            c->in_len += n;
        } else {
            if (c->n_out >= VHU_MAX_SEGS) {
                return VHU_ERR("more than %d segments", VHU_MAX_SEGS);
            }
            iov = &c->out[c->n_out++];
            c->out_len += n;
        }
        iov->iov_base = r->host + (gpa - r->guest_addr);
        iov->iov_len = n;
        gpa += n;
        len -= n;
    }
    return 0;
}

int vhu_chain_walk(const VhuMem *mem, const VringDesc *desc, uint32_t num, uint16_t head,
                   bool indirect, VhuChain *c, char *err, size_t errlen)
{
    const VringDesc *table = desc;
    uint32_t table_num = num;
    uint32_t i = head;
    uint32_t steps = 0;
    bool in_indirect = false;
    int ret;

    c->n_out = c->n_in = 0;
    c->out_len = c->in_len = 0;
    if (head >= num) {
        return VHU_ERR("head descriptor %u is beyond the table of %u", head, num);
    }
    for (;;) {
        VringDesc d;
        memcpy(&d, &table[i], sizeof(d));   /* read once: the guest may change it */
        if (d.flags & VRING_DESC_F_INDIRECT) {
            if (!indirect) {
                return VHU_ERR("indirect descriptor %u but INDIRECT_DESC not negotiated", i);
            }
            if (in_indirect) {
                return VHU_ERR("indirect table inside an indirect table (descriptor %u)", i);
            }
            if (d.flags & VRING_DESC_F_NEXT) {
                return VHU_ERR("indirect descriptor %u also has NEXT", i);
            }
            if (d.len == 0 || d.len % sizeof(VringDesc) != 0 ||
                d.len / sizeof(VringDesc) > VHU_MAX_QUEUE_SIZE) {
                return VHU_ERR("indirect table length %u is not a multiple of 16 up to %d "
                               "entries", d.len, VHU_MAX_QUEUE_SIZE);
            }
            if (steps > 0) {
                return VHU_ERR("indirect descriptor %u is not the first of its chain", i);
            }
            table = vhu_mem_gpa(mem, d.addr, d.len);
            if (!table) {
                return VHU_ERR("indirect table at 0x%llx (length %u) is outside guest memory",
                               (unsigned long long)d.addr, d.len);
            }
            if ((uintptr_t)table % _Alignof(VringDesc) != 0) {
                return VHU_ERR("indirect table at 0x%llx is misaligned",
                               (unsigned long long)d.addr);
            }
            table_num = d.len / sizeof(VringDesc);
            in_indirect = true;
            i = 0;
            steps = 0;
            continue;
        }
        if ((ret = chain_add(mem, c, d.addr, d.len, d.flags & VRING_DESC_F_WRITE, err,
                             errlen)) < 0) {
            return ret;
        }
        if (++steps > table_num) {
            return VHU_ERR("descriptor chain loops or is longer than its table (%u entries)",
                           table_num);
        }
        if (!(d.flags & VRING_DESC_F_NEXT)) {
            return 0;
        }
        if (d.next >= table_num) {
            return VHU_ERR("descriptor %u: next %u is beyond the table of %u", i, d.next,
                           table_num);
        }
        i = d.next;
    }
}

int vhu_packed_walk(const VhuMem *mem, const VringPackedDesc *ring, uint32_t num, uint16_t pos,
                    bool indirect, VhuChain *c, uint16_t *ndescs, uint16_t *id, char *err,
                    size_t errlen)
{
    uint32_t n = 0;
    int ret = 0;

    c->n_out = c->n_in = 0;
    c->out_len = c->in_len = 0;
    *ndescs = 0;
    *id = 0;
    if (pos >= num) {
        return VHU_ERR("ring position %u is beyond the ring of %u", pos, num);
    }
    /* First find the extent of the chain in the ring. */
    for (;;) {
        VringPackedDesc d;
        memcpy(&d, &ring[(pos + n) % num], sizeof(d));
        n++;
        *id = d.id;
        if (!(d.flags & VRING_DESC_F_NEXT)) {
            break;
        }
        if (n >= num) {
            return VHU_ERR("packed chain at %u does not end within the ring (%u entries)",
                           pos, num);
        }
    }
    *ndescs = (uint16_t)n;
    for (uint32_t i = 0; i < n && ret == 0; i++) {
        VringPackedDesc d;
        memcpy(&d, &ring[(pos + i) % num], sizeof(d));
        if (!(d.flags & VRING_DESC_F_INDIRECT)) {
            ret = chain_add(mem, c, d.addr, d.len, d.flags & VRING_DESC_F_WRITE, err, errlen);
            continue;
        }
        if (!indirect) {
            return VHU_ERR("indirect descriptor at %u but INDIRECT_DESC not negotiated", pos);
        }
        if (n != 1) {
            return VHU_ERR("indirect descriptor at %u is part of a chain", pos);
        }
        if (d.len == 0 || d.len % sizeof(VringPackedDesc) != 0 ||
            d.len / sizeof(VringPackedDesc) > VHU_MAX_QUEUE_SIZE) {
            return VHU_ERR("indirect table length %u is not a multiple of 16 up to %d entries",
                           d.len, VHU_MAX_QUEUE_SIZE);
        }
        const VringPackedDesc *t = vhu_mem_gpa(mem, d.addr, d.len);
        if (!t || (uintptr_t)t % _Alignof(VringPackedDesc) != 0) {
            return VHU_ERR("indirect table at 0x%llx (length %u) is outside guest memory or "
                           "misaligned", (unsigned long long)d.addr, d.len);
        }
        for (uint32_t k = 0; k < d.len / sizeof(VringPackedDesc) && ret == 0; k++) {
            VringPackedDesc e;
            memcpy(&e, &t[k], sizeof(e));
            if (e.flags & VRING_DESC_F_INDIRECT) {
                return VHU_ERR("indirect table inside an indirect table (entry %u)", k);
            }
            ret = chain_add(mem, c, e.addr, e.len, e.flags & VRING_DESC_F_WRITE, err, errlen);
        }
    }
    return ret;
}
