/*
 * NBD wire protocol (NetworkBlockDevice/nbd doc/proto.md): constants, and
 * pure functions that decode, validate and encode handshake and transmission
 * messages. No I/O here, so the message rules are unit-testable and fuzzable.
 */
#ifndef VDISK_EXPORT_NBD_PROTO_H
#define VDISK_EXPORT_NBD_PROTO_H

#include "vdisk/common.h"

#define NBD_MAGIC_INIT            0x4e42444d41474943ULL   /* "NBDMAGIC" */
#define NBD_MAGIC_OPTS            0x49484156454F5054ULL   /* "IHAVEOPT" */
#define NBD_MAGIC_REP             0x0003e889045565a9ULL   /* option reply */
#define NBD_MAGIC_REQUEST         0x25609513u
#define NBD_MAGIC_SIMPLE_REPLY    0x67446698u
#define NBD_MAGIC_STRUCTURED_REPLY 0x668e33efu

/* Handshake flags (server) and client flags */
#define NBD_FLAG_FIXED_NEWSTYLE   (1u << 0)
#define NBD_FLAG_NO_ZEROES        (1u << 1)
#define NBD_FLAG_C_FIXED_NEWSTYLE (1u << 0)
#define NBD_FLAG_C_NO_ZEROES      (1u << 1)

/* Transmission flags */
#define NBD_FLAG_HAS_FLAGS          (1u << 0)
#define NBD_FLAG_READ_ONLY          (1u << 1)
#define NBD_FLAG_SEND_FLUSH         (1u << 2)
#define NBD_FLAG_SEND_FUA           (1u << 3)
#define NBD_FLAG_ROTATIONAL         (1u << 4)
#define NBD_FLAG_SEND_TRIM          (1u << 5)
#define NBD_FLAG_SEND_WRITE_ZEROES  (1u << 6)
#define NBD_FLAG_SEND_DF            (1u << 7)
#define NBD_FLAG_CAN_MULTI_CONN     (1u << 8)
#define NBD_FLAG_SEND_RESIZE        (1u << 9)
#define NBD_FLAG_SEND_CACHE         (1u << 10)
#define NBD_FLAG_SEND_FAST_ZERO     (1u << 11)

/* Options */
enum {
    NBD_OPT_EXPORT_NAME = 1,
    NBD_OPT_ABORT = 2,
    NBD_OPT_LIST = 3,
    NBD_OPT_PEEK_EXPORT = 4,
    NBD_OPT_STARTTLS = 5,
    NBD_OPT_INFO = 6,
    NBD_OPT_GO = 7,
    NBD_OPT_STRUCTURED_REPLY = 8,
    NBD_OPT_LIST_META_CONTEXT = 9,   /* as implemented by qemu and libnbd */
    NBD_OPT_SET_META_CONTEXT = 10,
};

/* Option replies */
#define NBD_REP_ACK           1u
#define NBD_REP_SERVER        2u
#define NBD_REP_INFO          3u
#define NBD_REP_META_CONTEXT  4u
#define NBD_REP_ERR_BIT       (1u << 31)
#define NBD_REP_ERR_UNSUP     (NBD_REP_ERR_BIT | 1)
#define NBD_REP_ERR_POLICY    (NBD_REP_ERR_BIT | 2)
#define NBD_REP_ERR_INVALID   (NBD_REP_ERR_BIT | 3)
#define NBD_REP_ERR_PLATFORM  (NBD_REP_ERR_BIT | 4)
#define NBD_REP_ERR_TLS_REQD  (NBD_REP_ERR_BIT | 5)
#define NBD_REP_ERR_UNKNOWN   (NBD_REP_ERR_BIT | 6)
#define NBD_REP_ERR_SHUTDOWN  (NBD_REP_ERR_BIT | 7)
#define NBD_REP_ERR_BLOCK_SIZE_REQD (NBD_REP_ERR_BIT | 8)
#define NBD_REP_ERR_TOO_BIG   (NBD_REP_ERR_BIT | 9)

/* NBD_REP_INFO types */
enum {
    NBD_INFO_EXPORT = 0,
    NBD_INFO_NAME = 1,
    NBD_INFO_DESCRIPTION = 2,
    NBD_INFO_BLOCK_SIZE = 3,
};

/* Commands */
enum {
    NBD_CMD_READ = 0,
    NBD_CMD_WRITE = 1,
    NBD_CMD_DISC = 2,
    NBD_CMD_FLUSH = 3,
    NBD_CMD_TRIM = 4,
    NBD_CMD_CACHE = 5,
    NBD_CMD_WRITE_ZEROES = 6,
    NBD_CMD_BLOCK_STATUS = 7,
};

/* Command flags */
#define NBD_CMD_FLAG_FUA        (1u << 0)
#define NBD_CMD_FLAG_NO_HOLE    (1u << 1)
#define NBD_CMD_FLAG_DF         (1u << 2)
#define NBD_CMD_FLAG_REQ_ONE    (1u << 3)
#define NBD_CMD_FLAG_FAST_ZERO  (1u << 4)

/* Structured reply */
#define NBD_REPLY_FLAG_DONE          (1u << 0)
#define NBD_REPLY_TYPE_NONE          0u
#define NBD_REPLY_TYPE_OFFSET_DATA   1u
#define NBD_REPLY_TYPE_OFFSET_HOLE   2u
#define NBD_REPLY_TYPE_BLOCK_STATUS  5u
#define NBD_REPLY_TYPE_ERROR         ((1u << 15) | 1)
#define NBD_REPLY_TYPE_ERROR_OFFSET  ((1u << 15) | 2)

/* base:allocation flags */
#define NBD_STATE_HOLE  (1u << 0)
#define NBD_STATE_ZERO  (1u << 1)

/* Wire error values */
#define NBD_EPERM      1
#define NBD_EIO        5
#define NBD_ENOMEM     12
#define NBD_EINVAL     22
#define NBD_ENOSPC     28
#define NBD_EOVERFLOW  75
#define NBD_ENOTSUP    95
#define NBD_ESHUTDOWN  108

/* Sizes of fixed-layout messages */
#define NBD_REQUEST_SIZE          28
#define NBD_SIMPLE_REPLY_SIZE     16
#define NBD_CHUNK_HEADER_SIZE     20
#define NBD_OPTION_HEADER_SIZE    16
#define NBD_OPTION_REPLY_SIZE     20

/* Server limits */
#define NBD_MAX_STRING            4096           /* names, descriptions, queries */
#define NBD_MAX_OPTION_PAYLOAD    (16 * 1024)    /* larger option payloads: drop the client */
#define NBD_MAX_OPTIONS           1024           /* per connection: more is a DoS */
#define NBD_MAX_META_QUERIES      128
#define NBD_DEFAULT_MAX_BLOCK     (32u * 1024 * 1024)
#define NBD_HARD_MAX_PAYLOAD      (64u * 1024 * 1024)  /* writes past this: disconnect */
#define NBD_PREFERRED_BLOCK       4096u

/* Metadata context ids handed out by SET_META_CONTEXT */
#define NBD_META_ID_BASE_ALLOCATION   1u
#define NBD_META_ID_ALLOCATION_DEPTH  2u

/* ---- byte order helpers ---- */
static inline void nbd_put16(uint8_t *p, uint16_t v) { p[0] = v >> 8; p[1] = (uint8_t)v; }
static inline void nbd_put32(uint8_t *p, uint32_t v)
{
    p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = (uint8_t)v;
}
static inline void nbd_put64(uint8_t *p, uint64_t v)
{
    nbd_put32(p, (uint32_t)(v >> 32)); nbd_put32(p + 4, (uint32_t)v);
}
static inline uint16_t nbd_get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t nbd_get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline uint64_t nbd_get64(const uint8_t *p)
{
    return (uint64_t)nbd_get32(p) << 32 | nbd_get32(p + 4);
}

/* ---- handshake ---- */

typedef struct NbdOptionHeader {
    uint64_t magic;
    uint32_t option;
    uint32_t length;
} NbdOptionHeader;

void nbd_option_header_decode(const uint8_t buf[NBD_OPTION_HEADER_SIZE], NbdOptionHeader *h);
/* Encode an option reply header (payload of len bytes follows). */
void nbd_option_reply_encode(uint8_t buf[NBD_OPTION_REPLY_SIZE], uint32_t option,
                             uint32_t type, uint32_t len);

/* Parsed NBD_OPT_INFO / NBD_OPT_GO payload. name points into the payload. */
typedef struct NbdInfoRequest {
    const char *name;
    uint32_t name_len;
    uint16_t n_requests;
    bool want_name;
    bool want_description;
    bool want_block_size;
} NbdInfoRequest;

/* Parse INFO/GO payload. Returns 0 or -EINVAL (lengths inconsistent, name
 * too long, NUL in the name); *why gets a message for the error reply. */
int nbd_parse_info_request(const uint8_t *data, uint32_t len, NbdInfoRequest *out,
                           const char **why);

/* Parsed LIST/SET_META_CONTEXT payload: the export name and the queries
 * (pointers into the payload, not NUL-terminated). */
typedef struct NbdMetaRequest {
    const char *name;
    uint32_t name_len;
    uint32_t n_queries;
    const char *query[NBD_MAX_META_QUERIES];
    uint32_t query_len[NBD_MAX_META_QUERIES];
} NbdMetaRequest;

int nbd_parse_meta_request(const uint8_t *data, uint32_t len, NbdMetaRequest *out,
                           const char **why);

/* Which contexts a query selects (bit per NBD_META_ID_* - 1). list: a LIST
 * query (empty query or a bare namespace "base:"/"qemu:" selects all of it).
 * Unknown namespaces select nothing. */
unsigned nbd_meta_query_match(const char *q, uint32_t len, bool list);
const char *nbd_meta_context_name(uint32_t id);

/* True if s[0..len) is a valid NBD string (no NUL, at most NBD_MAX_STRING). */
bool nbd_string_valid(const char *s, uint32_t len);

/* ---- transmission ---- */

typedef struct NbdRequest {
    uint32_t magic;
    uint16_t flags;
    uint16_t type;
    uint64_t cookie;
    uint64_t offset;
    uint32_t length;
} NbdRequest;

void nbd_request_decode(const uint8_t buf[NBD_REQUEST_SIZE], NbdRequest *r);
void nbd_request_encode(uint8_t buf[NBD_REQUEST_SIZE], const NbdRequest *r);

/* What a connection negotiated and the export it serves, for validation. */
typedef struct NbdExportLimits {
    uint64_t size;
    uint32_t min_block;        /* power of two */
    uint32_t max_block;
    uint16_t tx_flags;         /* transmission flags advertised */
    bool structured;           /* structured replies negotiated */
    unsigned meta_contexts;    /* bitmask of selected contexts */
} NbdExportLimits;

typedef enum NbdVerdict {
    NBD_VERDICT_OK,          /* serve it */
    NBD_VERDICT_ERROR,       /* reply with *err (after consuming any payload) */
    NBD_VERDICT_DISCONNECT,  /* protocol violation: drop the connection */
} NbdVerdict;

/* Validate a request header against the export and negotiation. On ERROR,
 * *err is the (positive) NBD error value and *why a message; the write
 * payload (if type is WRITE) must still be consumed. DISCONNECT: bad magic,
 * or a write payload above NBD_HARD_MAX_PAYLOAD (never read it). */
NbdVerdict nbd_request_validate(const NbdRequest *r, const NbdExportLimits *lim,
                                uint32_t *err, const char **why);

/* Map a negative errno to a wire error value. */
uint32_t nbd_errno_to_wire(int err);

void nbd_simple_reply_encode(uint8_t buf[NBD_SIMPLE_REPLY_SIZE], uint32_t error, uint64_t cookie);
void nbd_chunk_header_encode(uint8_t buf[NBD_CHUNK_HEADER_SIZE], uint16_t flags, uint16_t type,
                             uint64_t cookie, uint32_t length);

#endif
