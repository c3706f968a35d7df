/*
 * NBD wire protocol: decoding, validation and encoding of handshake and
 * transmission messages (doc/proto.md of NetworkBlockDevice/nbd). Pure code:
 * the server (nbd-transmission.c, nbd-handshake.c) does the I/O, tests and the fuzzer call it too.
 */
#include <errno.h>
#include <string.h>

#include "export/nbd-proto.h"

void nbd_option_header_decode(const uint8_t buf[NBD_OPTION_HEADER_SIZE], NbdOptionHeader *h)
{
    h->magic = nbd_get64(buf);
    h->option = nbd_get32(buf + 8);
    h->length = nbd_get32(buf + 12);
}

void nbd_option_reply_encode(uint8_t buf[NBD_OPTION_REPLY_SIZE], uint32_t option,
                             uint32_t type, uint32_t len)
{
    nbd_put64(buf, NBD_MAGIC_REP);
    nbd_put32(buf + 8, option);
    nbd_put32(buf + 12, type);
    nbd_put32(buf + 16, len);
}

bool nbd_string_valid(const char *s, uint32_t len)
{
    return len <= NBD_MAX_STRING && (len == 0 || memchr(s, '\0', len) == NULL);
}

int nbd_parse_info_request(const uint8_t *data, uint32_t len, NbdInfoRequest *out,
                           const char **why)
{
    memset(out, 0, sizeof(*out));
    if (len < 4) {
        *why = "option payload too short for the export name length";
        return -EINVAL;
    }
    uint32_t name_len = nbd_get32(data);
    if (name_len > NBD_MAX_STRING) {
        *why = "export name longer than 4096 bytes";
        return -EINVAL;
    }
    if ((uint64_t)name_len + 6 > len) {
        *why = "export name length exceeds the option payload";
        return -EINVAL;
    }
    out->name = (const char *)data + 4;
    out->name_len = name_len;
    if (!nbd_string_valid(out->name, name_len)) {
        *why = "export name contains a NUL byte";
        return -EINVAL;
    }
    uint16_t n = nbd_get16(data + 4 + name_len);
    if ((uint64_t)4 + name_len + 2 + 2 * (uint64_t)n != len) {
        *why = "information request count does not match the option length";
        return -EINVAL;
    }
    out->n_requests = n;
    const uint8_t *p = data + 4 + name_len + 2;
    for (uint16_t i = 0; i < n; i++) {
        switch (nbd_get16(p + 2 * i)) {
        case NBD_INFO_NAME: out->want_name = true; break;
        case NBD_INFO_DESCRIPTION: out->want_description = true; break;
        case NBD_INFO_BLOCK_SIZE: out->want_block_size = true; break;
        default: break;   /* EXPORT is always sent; unknown ones are ignored */
        }
    }
    return 0;
}

int nbd_parse_meta_request(const uint8_t *data, uint32_t len, NbdMetaRequest *out,
                           const char **why)
{
    uint64_t pos = 0;

    memset(out, 0, sizeof(*out));
    if (len < 8) {
        *why = "meta context option payload too short";
        return -EINVAL;
    }
    uint32_t name_len = nbd_get32(data);
    if (name_len > NBD_MAX_STRING || (uint64_t)name_len + 8 > len) {
        *why = "export name length exceeds the option payload or 4096 bytes";
        return -EINVAL;
    }
    out->name = (const char *)data + 4;
    out->name_len = name_len;
    if (!nbd_string_valid(out->name, name_len)) {
        *why = "export name contains a NUL byte";
        return -EINVAL;
    }
    pos = 4 + (uint64_t)name_len;
    out->n_queries = nbd_get32(data + pos);
    pos += 4;
    if (out->n_queries > NBD_MAX_META_QUERIES) {
        *why = "too many meta context queries";
        return -EINVAL;
    }
    for (uint32_t i = 0; i < out->n_queries; i++) {
        if (pos + 4 > len) {
            *why = "meta context query count exceeds the option payload";
            return -EINVAL;
        }
        uint32_t qlen = nbd_get32(data + pos);
        pos += 4;
        if (qlen > NBD_MAX_STRING || pos + qlen > len) {
            *why = "meta context query length exceeds the option payload or 4096 bytes";
            return -EINVAL;
        }
        out->query[i] = (const char *)data + pos;
        out->query_len[i] = qlen;
        if (!nbd_string_valid(out->query[i], qlen)) {
            *why = "meta context query contains a NUL byte";
            return -EINVAL;
        }
        pos += qlen;
    }
    if (pos != len) {
        *why = "trailing bytes after the meta context queries";
        return -EINVAL;
    }
    return 0;
}

static bool nbd_str_eq(const char *q, uint32_t len, const char *lit)
{
    return strlen(lit) == len && memcmp(q, lit, len) == 0;
}

unsigned nbd_meta_query_match(const char *q, uint32_t len, bool list)
{
    if (nbd_str_eq(q, len, "base:allocation")) {
        return 1u << (NBD_META_ID_BASE_ALLOCATION - 1);
    }
    if (nbd_str_eq(q, len, "qemu:allocation-depth")) {
        return 1u << (NBD_META_ID_ALLOCATION_DEPTH - 1);
    }
    if (list && nbd_str_eq(q, len, "base:")) {
        return 1u << (NBD_META_ID_BASE_ALLOCATION - 1);
    }
    if (list && nbd_str_eq(q, len, "qemu:")) {
        return 1u << (NBD_META_ID_ALLOCATION_DEPTH - 1);
    }
    return 0;
}

const char *nbd_meta_context_name(uint32_t id)
{
    switch (id) {
    case NBD_META_ID_BASE_ALLOCATION: return "base:allocation";
    case NBD_META_ID_ALLOCATION_DEPTH: return "qemu:allocation-depth";
    default: return NULL;
    }
}

void nbd_request_decode(const uint8_t buf[NBD_REQUEST_SIZE], NbdRequest *r)
{
    r->magic = nbd_get32(buf);
    r->flags = nbd_get16(buf + 4);
    r->type = nbd_get16(buf + 6);
    r->cookie = nbd_get64(buf + 8);
    r->offset = nbd_get64(buf + 16);
    r->length = nbd_get32(buf + 24);
}

void nbd_request_encode(uint8_t buf[NBD_REQUEST_SIZE], const NbdRequest *r)
{
    nbd_put32(buf, r->magic);
    nbd_put16(buf + 4, r->flags);
    nbd_put16(buf + 6, r->type);
    nbd_put64(buf + 8, r->cookie);
    nbd_put64(buf + 16, r->offset);
    nbd_put32(buf + 24, r->length);
}

static NbdVerdict nbd_reject(uint32_t *err, const char **why, uint32_t e, const char *msg)
{
    *err = e;
    *why = msg;
    return NBD_VERDICT_ERROR;
}

NbdVerdict nbd_request_validate(const NbdRequest *r, const NbdExportLimits *lim,
                                uint32_t *err, const char **why)
{
    uint16_t allowed = 0;
    uint16_t need = 0;
    bool writes = false, ranged = true, capped = false;

    *err = 0;
    *why = NULL;
    if (r->magic != NBD_MAGIC_REQUEST) {
        *why = "bad request magic";
        return NBD_VERDICT_DISCONNECT;
    }
    if (r->type == NBD_CMD_WRITE && r->length > NBD_HARD_MAX_PAYLOAD) {
        *why = "write payload above the hard limit";
        return NBD_VERDICT_DISCONNECT;
    }
    if (lim->tx_flags & NBD_FLAG_SEND_FUA) {
        allowed |= NBD_CMD_FLAG_FUA;
    }
    switch (r->type) {
    case NBD_CMD_READ:
        capped = true;
        if (lim->tx_flags & NBD_FLAG_SEND_DF) {
            allowed |= NBD_CMD_FLAG_DF;
        }
        break;
    case NBD_CMD_WRITE:
        writes = capped = true;
        break;
    case NBD_CMD_DISC:
        return NBD_VERDICT_OK;
    case NBD_CMD_FLUSH:
        need = NBD_FLAG_SEND_FLUSH;
        ranged = false;
        break;
    case NBD_CMD_TRIM:
        need = NBD_FLAG_SEND_TRIM;
        writes = true;
        break;
    case NBD_CMD_CACHE:
        need = NBD_FLAG_SEND_CACHE;
        capped = true;
        break;
    case NBD_CMD_WRITE_ZEROES:
        need = NBD_FLAG_SEND_WRITE_ZEROES;
        writes = true;
        allowed |= NBD_CMD_FLAG_NO_HOLE;
        if (lim->tx_flags & NBD_FLAG_SEND_FAST_ZERO) {
            allowed |= NBD_CMD_FLAG_FAST_ZERO;
        }
        break;
    case NBD_CMD_BLOCK_STATUS:
        if (!lim->structured || !lim->meta_contexts) {
            return nbd_reject(err, why, NBD_EINVAL,
                              "block status without a negotiated metadata context");
        }
        allowed |= NBD_CMD_FLAG_REQ_ONE;
        break;
    default:
        return nbd_reject(err, why, NBD_EINVAL, "unknown command");
    }
    /* Writes to a read-only export: EPERM even though TRIM/WRITE_ZEROES are
     * not advertised there (the spec asks for EPERM on write and trim). */
    if (writes && (lim->tx_flags & NBD_FLAG_READ_ONLY)) {
        return nbd_reject(err, why, NBD_EPERM, "export is read-only");
    }
    if (need && !(lim->tx_flags & need)) {
        return nbd_reject(err, why, NBD_EINVAL, "command not advertised for this export");
    }
    if (r->flags & ~allowed) {
        return nbd_reject(err, why, NBD_EINVAL, "command flag not valid for this command");
    }
    if (!ranged) {
        if (r->offset || r->length) {
            return nbd_reject(err, why, NBD_EINVAL, "flush offset and length must be zero");
        }
        return NBD_VERDICT_OK;
    }
    if (r->length == 0) {
        return nbd_reject(err, why, NBD_EINVAL, "zero-length request");
    }
    if (capped && r->length > lim->max_block) {
        return nbd_reject(err, why, NBD_EINVAL, "request larger than the maximum block size");
    }
    if (r->offset > lim->size || r->length > lim->size - r->offset) {
        return nbd_reject(err, why, writes ? NBD_ENOSPC : NBD_EINVAL,
                          "request past the end of the export");
    }
    if (lim->min_block > 1) {
        uint64_t end = r->offset + r->length;
        if (r->offset % lim->min_block ||
            (end % lim->min_block && end != lim->size)) {
            return nbd_reject(err, why, NBD_EINVAL,
                              "request not aligned to the minimum block size");
        }
    }
    return NBD_VERDICT_OK;
}

uint32_t nbd_errno_to_wire(int err)
{
    switch (err < 0 ? -err : err) {
    case 0: return 0;
    case EPERM: case EROFS: case EACCES: return NBD_EPERM;
    case ENOMEM: return NBD_ENOMEM;
    case EINVAL: return NBD_EINVAL;
    case ENOSPC: case EDQUOT: case EFBIG: return NBD_ENOSPC;
    case EOVERFLOW: return NBD_EOVERFLOW;
    case ENOTSUP: return NBD_ENOTSUP;
    case ESHUTDOWN: return NBD_ESHUTDOWN;
    default: return NBD_EIO;
    }
}

void nbd_simple_reply_encode(uint8_t buf[NBD_SIMPLE_REPLY_SIZE], uint32_t error, uint64_t cookie)
{
    nbd_put32(buf, NBD_MAGIC_SIMPLE_REPLY);
    nbd_put32(buf + 4, error);
    nbd_put64(buf + 8, cookie);
}

void nbd_chunk_header_encode(uint8_t buf[NBD_CHUNK_HEADER_SIZE], uint16_t flags, uint16_t type,
                             uint64_t cookie, uint32_t length)
{
    nbd_put32(buf, NBD_MAGIC_STRUCTURED_REPLY);
    nbd_put16(buf + 4, flags);
    nbd_put16(buf + 6, type);
    nbd_put64(buf + 8, cookie);
    nbd_put32(buf + 16, length);
}
