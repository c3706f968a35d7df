/*
 * Unit tests of the NBD message code (src/export/nbd-proto.c): request
 * validation against export limits and negotiation, option payload parsing,
 * meta context queries, errno mapping, encoders.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "../../../src/export/nbd-proto.c"

static NbdExportLimits rw_limits(void)
{
    NbdExportLimits l = {
        .size = 1024 * 1024,
        .min_block = 1,
        .max_block = NBD_DEFAULT_MAX_BLOCK,
        .tx_flags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA |
                    NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_DF |
                    NBD_FLAG_SEND_CACHE | NBD_FLAG_SEND_FAST_ZERO,
        .structured = true,
        .meta_contexts = 1,
    };
    return l;
}

static NbdRequest req(uint16_t type, uint16_t flags, uint64_t off, uint32_t len)
{
    NbdRequest r = { .magic = NBD_MAGIC_REQUEST, .flags = flags, .type = type, .cookie = 7,
                     .offset = off, .length = len };
    return r;
}

static void check(NbdRequest r, NbdExportLimits l, NbdVerdict want, uint32_t want_err)
{
    uint32_t err = 1234;
    const char *why = NULL;
    NbdVerdict v = nbd_request_validate(&r, &l, &err, &why);
    assert_int_equal(v, want);
    if (want == NBD_VERDICT_ERROR) {
        assert_int_equal(err, want_err);
        assert_non_null(why);
    } else if (want == NBD_VERDICT_OK) {
        assert_int_equal(err, 0);
    }
}

static void test_request_roundtrip(void **state)
{
    uint8_t buf[NBD_REQUEST_SIZE];
    NbdRequest a = req(NBD_CMD_WRITE, NBD_CMD_FLAG_FUA, 0x123456789abcULL, 4096), b;
    a.cookie = 0xdeadbeefcafef00dULL;
    nbd_request_encode(buf, &a);
    assert_int_equal(buf[0], 0x25);
    assert_int_equal(buf[3], 0x13);
    nbd_request_decode(buf, &b);
    /* field by field: the struct has tail padding */
    assert_int_equal(a.magic, b.magic);
    assert_int_equal(a.flags, b.flags);
    assert_int_equal(a.type, b.type);
    assert_int_equal(a.cookie, b.cookie);
    assert_int_equal(a.offset, b.offset);
    assert_int_equal(a.length, b.length);
}

static void test_validate_ok(void **state)
{
    NbdExportLimits l = rw_limits();
    check(req(NBD_CMD_READ, 0, 0, 4096), l, NBD_VERDICT_OK, 0);
    check(req(NBD_CMD_READ, NBD_CMD_FLAG_DF, 0, 4096), l, NBD_VERDICT_OK, 0);
    check(req(NBD_CMD_WRITE, NBD_CMD_FLAG_FUA, l.size - 1, 1), l, NBD_VERDICT_OK, 0);
    check(req(NBD_CMD_FLUSH, 0, 0, 0), l, NBD_VERDICT_OK, 0);
    check(req(NBD_CMD_TRIM, 0, 0, l.size), l, NBD_VERDICT_OK, 0);
    check(req(NBD_CMD_WRITE_ZEROES, NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO, 0, 512), l,
          NBD_VERDICT_OK, 0);
    check(req(NBD_CMD_BLOCK_STATUS, NBD_CMD_FLAG_REQ_ONE, 0, l.size), l, NBD_VERDICT_OK, 0);
    check(req(NBD_CMD_CACHE, 0, 0, 65536), l, NBD_VERDICT_OK, 0);
    check(req(NBD_CMD_DISC, 0, 0, 0), l, NBD_VERDICT_OK, 0);
}

static void test_validate_magic(void **state)
{
    NbdRequest r = req(NBD_CMD_READ, 0, 0, 512);
    r.magic = 0x25609514;
    check(r, rw_limits(), NBD_VERDICT_DISCONNECT, 0);
}

static void test_validate_unknown(void **state)
{
    NbdExportLimits l = rw_limits();
    check(req(8, 0, 0, 512), l, NBD_VERDICT_ERROR, NBD_EINVAL);
    check(req(0xffff, 0, 0, 0), l, NBD_VERDICT_ERROR, NBD_EINVAL);
    /* flags not valid for the command */
    check(req(NBD_CMD_READ, NBD_CMD_FLAG_REQ_ONE, 0, 512), l, NBD_VERDICT_ERROR, NBD_EINVAL);
    check(req(NBD_CMD_WRITE, NBD_CMD_FLAG_DF, 0, 512), l, NBD_VERDICT_ERROR, NBD_EINVAL);
    check(req(NBD_CMD_READ, 1u << 15, 0, 512), l, NBD_VERDICT_ERROR, NBD_EINVAL);
    check(req(NBD_CMD_BLOCK_STATUS, NBD_CMD_FLAG_NO_HOLE, 0, 512), l, NBD_VERDICT_ERROR,
          NBD_EINVAL);
    /* DF / FAST_ZERO / FUA only when advertised */
    l.tx_flags &= ~(NBD_FLAG_SEND_DF | NBD_FLAG_SEND_FAST_ZERO | NBD_FLAG_SEND_FUA);
    check(req(NBD_CMD_READ, NBD_CMD_FLAG_DF, 0, 512), l, NBD_VERDICT_ERROR, NBD_EINVAL);
    check(req(NBD_CMD_WRITE_ZEROES, NBD_CMD_FLAG_FAST_ZERO, 0, 512), l, NBD_VERDICT_ERROR,
          NBD_EINVAL);
    check(req(NBD_CMD_WRITE, NBD_CMD_FLAG_FUA, 0, 512), l, NBD_VERDICT_ERROR, NBD_EINVAL);
    /* commands not advertised */
    l.tx_flags &= ~(NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_CACHE | NBD_FLAG_SEND_FLUSH);
    check(req(NBD_CMD_TRIM, 0, 0, 512), l, NBD_VERDICT_ERROR, NBD_EINVAL);
    check(req(NBD_CMD_CACHE, 0, 0, 512), l, NBD_VERDICT_ERROR, NBD_EINVAL);
    check(req(NBD_CMD_FLUSH, 0, 0, 0), l, NBD_VERDICT_ERROR, NBD_EINVAL);
}

static void test_validate_read_only(void **state)
{
    NbdExportLimits l = rw_limits();
    l.tx_flags |= NBD_FLAG_READ_ONLY;
    check(req(NBD_CMD_WRITE, 0, 0, 512), l, NBD_VERDICT_ERROR, NBD_EPERM);
    check(req(NBD_CMD_TRIM, 0, 0, 512), l, NBD_VERDICT_ERROR, NBD_EPERM);
    check(req(NBD_CMD_WRITE_ZEROES, 0, 0, 512), l, NBD_VERDICT_ERROR, NBD_EPERM);
    check(req(NBD_CMD_READ, 0, 0, 512), l, NBD_VERDICT_OK, 0);
}

static void test_validate_range(void **state)
{
    NbdExportLimits l = rw_limits();
    check(req(NBD_CMD_READ, 0, l.size, 1), l, NBD_VERDICT_ERROR, NBD_EINVAL);
    check(req(NBD_CMD_READ, 0, l.size - 511, 512), l, NBD_VERDICT_ERROR, NBD_EINVAL);
    check(req(NBD_CMD_WRITE, 0, l.size - 511, 512), l, NBD_VERDICT_ERROR, NBD_ENOSPC);
    check(req(NBD_CMD_WRITE_ZEROES, 0, l.size, 512), l, NBD_VERDICT_ERROR, NBD_ENOSPC);
    check(req(NBD_CMD_TRIM, 0, UINT64_MAX, 512), l, NBD_VERDICT_ERROR, NBD_ENOSPC);
    check(req(NBD_CMD_READ, 0, UINT64_MAX - 100, 512), l, NBD_VERDICT_ERROR, NBD_EINVAL);
    check(req(NBD_CMD_BLOCK_STATUS, 0, l.size - 1, 2), l, NBD_VERDICT_ERROR, NBD_EINVAL);
    /* zero length */
    check(req(NBD_CMD_READ, 0, 0, 0), l, NBD_VERDICT_ERROR, NBD_EINVAL);
    check(req(NBD_CMD_WRITE, 0, 0, 0), l, NBD_VERDICT_ERROR, NBD_EINVAL);
    /* flush must have zero offset and length */
    check(req(NBD_CMD_FLUSH, 0, 512, 0), l, NBD_VERDICT_ERROR, NBD_EINVAL);
    check(req(NBD_CMD_FLUSH, 0, 0, 512), l, NBD_VERDICT_ERROR, NBD_EINVAL);
}

static void test_validate_sizes(void **state)
{
    NbdExportLimits l = rw_limits();
    l.size = 1ULL << 40;
    check(req(NBD_CMD_READ, 0, 0, l.max_block + 1), l, NBD_VERDICT_ERROR, NBD_EINVAL);
    check(req(NBD_CMD_CACHE, 0, 0, l.max_block + 1), l, NBD_VERDICT_ERROR, NBD_EINVAL);
    /* above the advertised maximum: error (payload is skipped by the server) */
    check(req(NBD_CMD_WRITE, 0, 0, l.max_block + 1), l, NBD_VERDICT_ERROR, NBD_EINVAL);
    /* above the hard cap: never read the payload */
    check(req(NBD_CMD_WRITE, 0, 0, NBD_HARD_MAX_PAYLOAD + 1), l, NBD_VERDICT_DISCONNECT, 0);
    check(req(NBD_CMD_WRITE, 0, 0, UINT32_MAX), l, NBD_VERDICT_DISCONNECT, 0);
    /* trim/zero/status are not capped by the block size */
    check(req(NBD_CMD_TRIM, 0, 0, UINT32_MAX), l, NBD_VERDICT_OK, 0);
    check(req(NBD_CMD_BLOCK_STATUS, 0, 0, UINT32_MAX), l, NBD_VERDICT_OK, 0);
}

static void test_validate_alignment(void **state)
{
    NbdExportLimits l = rw_limits();
    l.min_block = 512;
    l.size = 1024 * 1024 + 100;   /* unaligned tail */
    check(req(NBD_CMD_READ, 0, 512, 512), l, NBD_VERDICT_OK, 0);
    check(req(NBD_CMD_READ, 0, 1, 512), l, NBD_VERDICT_ERROR, NBD_EINVAL);
    check(req(NBD_CMD_READ, 0, 0, 511), l, NBD_VERDICT_ERROR, NBD_EINVAL);
    check(req(NBD_CMD_WRITE, 0, 100, 512), l, NBD_VERDICT_ERROR, NBD_EINVAL);
    check(req(NBD_CMD_READ, 0, 1024 * 1024, 100), l, NBD_VERDICT_OK, 0);
}

static void test_validate_block_status(void **state)
{
    NbdExportLimits l = rw_limits();
    l.meta_contexts = 0;
    check(req(NBD_CMD_BLOCK_STATUS, 0, 0, 512), l, NBD_VERDICT_ERROR, NBD_EINVAL);
    l.meta_contexts = 1;
    l.structured = false;
    check(req(NBD_CMD_BLOCK_STATUS, 0, 0, 512), l, NBD_VERDICT_ERROR, NBD_EINVAL);
}

static size_t put_info(uint8_t *b, const char *name, int n, const uint16_t *types)
{
    size_t nl = strlen(name);
    nbd_put32(b, nl);
    memcpy(b + 4, name, nl);
    nbd_put16(b + 4 + nl, n);
    for (int i = 0; i < n; i++) {
        nbd_put16(b + 6 + nl + 2 * i, types[i]);
    }
    return 6 + nl + 2 * n;
}

static void test_info_parse(void **state)
{
    uint8_t b[8192];
    NbdInfoRequest ir;
    const char *why;
    uint16_t types[] = { NBD_INFO_NAME, NBD_INFO_BLOCK_SIZE, 77 };
    size_t len = put_info(b, "disk", 3, types);

    assert_int_equal(nbd_parse_info_request(b, len, &ir, &why), 0);
    assert_int_equal(ir.name_len, 4);
    assert_memory_equal(ir.name, "disk", 4);
    assert_true(ir.want_name);
    assert_true(ir.want_block_size);
    assert_false(ir.want_description);
    /* count and length disagree */
    assert_int_equal(nbd_parse_info_request(b, len - 1, &ir, &why), -EINVAL);
    assert_int_equal(nbd_parse_info_request(b, len + 1, &ir, &why), -EINVAL);
    assert_int_equal(nbd_parse_info_request(b, 3, &ir, &why), -EINVAL);
    /* name length points past the payload */
    nbd_put32(b, 0xffffffffu);
    assert_int_equal(nbd_parse_info_request(b, len, &ir, &why), -EINVAL);
    /* name longer than 4096 */
    char big[5000];
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = 0;
    len = put_info(b, big, 0, NULL);
    assert_int_equal(nbd_parse_info_request(b, len, &ir, &why), -EINVAL);
    assert_non_null(strstr(why, "4096"));
    /* NUL inside the name */
    len = put_info(b, "ab", 0, NULL);
    b[5] = 0;
    assert_int_equal(nbd_parse_info_request(b, len, &ir, &why), -EINVAL);
    /* empty name is the default export */
    len = put_info(b, "", 0, NULL);
    assert_int_equal(nbd_parse_info_request(b, len, &ir, &why), 0);
    assert_int_equal(ir.name_len, 0);
}

static size_t put_meta(uint8_t *b, const char *name, int n, const char **q)
{
    size_t pos = 0, nl = strlen(name);
    nbd_put32(b, nl);
    memcpy(b + 4, name, nl);
    pos = 4 + nl;
    nbd_put32(b + pos, n);
    pos += 4;
    for (int i = 0; i < n; i++) {
        size_t ql = strlen(q[i]);
        nbd_put32(b + pos, ql);
        memcpy(b + pos + 4, q[i], ql);
        pos += 4 + ql;
    }
    return pos;
}

static void test_meta_parse(void **state)
{
    uint8_t b[4096];
    NbdMetaRequest *mr = malloc(sizeof(*mr));
    const char *why;
    const char *q[] = { "base:allocation", "qemu:allocation-depth", "foo:bar" };
    size_t len = put_meta(b, "disk", 3, q);

    assert_int_equal(nbd_parse_meta_request(b, len, mr, &why), 0);
    assert_int_equal(mr->n_queries, 3);
    unsigned m = 0;
    for (uint32_t i = 0; i < mr->n_queries; i++) {
        m |= nbd_meta_query_match(mr->query[i], mr->query_len[i], false);
    }
    assert_int_equal(m, 3);
    assert_int_equal(nbd_parse_meta_request(b, len + 1, mr, &why), -EINVAL);   /* trailing */
    assert_int_equal(nbd_parse_meta_request(b, len - 1, mr, &why), -EINVAL);   /* short */
    /* query count far beyond the payload */
    len = put_meta(b, "disk", 0, NULL);
    nbd_put32(b + 8, 1000000);
    assert_int_equal(nbd_parse_meta_request(b, len, mr, &why), -EINVAL);
    nbd_put32(b + 8, 2);
    assert_int_equal(nbd_parse_meta_request(b, len, mr, &why), -EINVAL);
    free(mr);
}

static void test_meta_match(void **state)
{
    assert_int_equal(nbd_meta_query_match("base:allocation", 15, false), 1);
    assert_int_equal(nbd_meta_query_match("base:allocation", 14, false), 0);
    assert_int_equal(nbd_meta_query_match("base:", 5, true), 1);
    assert_int_equal(nbd_meta_query_match("base:", 5, false), 0);
    assert_int_equal(nbd_meta_query_match("qemu:", 5, true), 2);
    assert_int_equal(nbd_meta_query_match("qemu:dirty-bitmap:x", 19, true), 0);
    assert_string_equal(nbd_meta_context_name(2), "qemu:allocation-depth");
    assert_null(nbd_meta_context_name(3));
}

static void test_errno_map(void **state)
{
    assert_int_equal(nbd_errno_to_wire(0), 0);
    assert_int_equal(nbd_errno_to_wire(-EROFS), NBD_EPERM);
    assert_int_equal(nbd_errno_to_wire(-EDQUOT), NBD_ENOSPC);
    assert_int_equal(nbd_errno_to_wire(-EFBIG), NBD_ENOSPC);
    assert_int_equal(nbd_errno_to_wire(-ENOTSUP), NBD_ENOTSUP);
    assert_int_equal(nbd_errno_to_wire(-ETIMEDOUT), NBD_EIO);
    assert_int_equal(nbd_errno_to_wire(-EINVAL), NBD_EINVAL);
}

static void test_encoders(void **state)
{
    uint8_t b[NBD_CHUNK_HEADER_SIZE];
    nbd_chunk_header_encode(b, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_HOLE,
                            0x0102030405060708ULL, 12);
    assert_int_equal(nbd_get32(b), NBD_MAGIC_STRUCTURED_REPLY);
    assert_int_equal(nbd_get16(b + 4), 1);
    assert_int_equal(nbd_get16(b + 6), 2);
    assert_true(nbd_get64(b + 8) == 0x0102030405060708ULL);
    assert_int_equal(nbd_get32(b + 16), 12);
    uint8_t o[NBD_OPTION_REPLY_SIZE];
    nbd_option_reply_encode(o, NBD_OPT_GO, NBD_REP_ERR_UNKNOWN, 5);
    assert_true(nbd_get64(o) == NBD_MAGIC_REP);
    assert_int_equal(nbd_get32(o + 12), 0x80000006u);
    NbdOptionHeader h;
    uint8_t oh[16];
    nbd_put64(oh, NBD_MAGIC_OPTS);
    nbd_put32(oh + 8, 7);
    nbd_put32(oh + 12, 99);
    nbd_option_header_decode(oh, &h);
    assert_int_equal(h.option, 7);
    assert_int_equal(h.length, 99);
}

int main(void)
{
    const struct CMUnitTest all[] = {
        { "/nbd/proto/request/roundtrip", test_request_roundtrip, NULL, NULL, NULL },
        { "/nbd/proto/validate/ok", test_validate_ok, NULL, NULL, NULL },
        { "/nbd/proto/validate/bad-magic", test_validate_magic, NULL, NULL, NULL },
        { "/nbd/proto/validate/unknown-command-and-flags", test_validate_unknown, NULL, NULL,
          NULL },
        { "/nbd/proto/validate/read-only", test_validate_read_only, NULL, NULL, NULL },
        { "/nbd/proto/validate/range", test_validate_range, NULL, NULL, NULL },
        { "/nbd/proto/validate/sizes", test_validate_sizes, NULL, NULL, NULL },
        { "/nbd/proto/validate/alignment", test_validate_alignment, NULL, NULL, NULL },
        { "/nbd/proto/validate/block-status", test_validate_block_status, NULL, NULL, NULL },
        { "/nbd/proto/option/info", test_info_parse, NULL, NULL, NULL },
        { "/nbd/proto/option/meta-context", test_meta_parse, NULL, NULL, NULL },
        { "/nbd/proto/meta/match", test_meta_match, NULL, NULL, NULL },
        { "/nbd/proto/errno", test_errno_map, NULL, NULL, NULL },
        { "/nbd/proto/encode", test_encoders, NULL, NULL, NULL },
    };
    return cmocka_run_group_tests(all, NULL, NULL);
}
