/*
 * Helpers shared by the block layer's and the filters' unit tests
 * (blocktest.h, ../filters/filtertest.h): open nodes from option strings,
 * and one request of any kind run in a coroutine.
 */
#ifndef NODETEST_H
#define NODETEST_H

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include "block/driver.h"
#include "vdisk/coroutine.h"

static inline VdNode *nt_open(const char *optstr, int flags, VdError **errp)
{
    VdError *err = NULL;
    VdOpts *o = vd_opts_parse(optstr, NULL, &err);
    if (!o) {
        fail_msg("option parse %s: %s", optstr, err->msg);
    }
    return vd_node_open(NULL, o, flags, errp);
}

static inline VdNode *nt_open_ok(const char *optstr, int flags)
{
    VdError *err = NULL;
    VdNode *n = nt_open(optstr, flags, &err);
    if (!n) {
        fail_msg("open %s: %s", optstr, err ? err->msg : "?");
    }
    return n;
}

/* Expect the open to fail with a message containing want. */
static inline void nt_open_fails(const char *optstr, int flags, const char *want)
{
    VdError *err = NULL;
    VdNode *n = nt_open(optstr, flags, &err);
    if (n) {
        vd_node_unref(n);
        fail_msg("open %s succeeded", optstr);
    }
    assert_non_null(err);
    if (want && !strstr(err->msg, want)) {
        fail_msg("open %s: message '%s' lacks '%s'", optstr, err->msg, want);
    }
    vd_error_free(err);
}

enum { NT_READ, NT_WRITE, NT_FLUSH, NT_ZEROES, NT_DISCARD, NT_STATUS, NT_TRUNCATE };

/* One request of kind NT_*: buf for reads and writes, offset is the new
 * length for NT_TRUNCATE. Returns its result. */
static inline int coroutine_fn nt_request(VdNode *node, int kind, int64_t offset, int64_t bytes,
                                          void *buf, int flags)
{
    int64_t pnum, map;
    VdNode *file;
    switch (kind) {
    case NT_READ:
        return vd_co_pread(node, offset, bytes, buf, flags);
    case NT_WRITE:
        return vd_co_pwrite(node, offset, bytes, buf, flags);
    case NT_FLUSH:
        return vd_co_flush(node);
    case NT_ZEROES:
        return vd_co_pwrite_zeroes(node, offset, bytes, flags);
    case NT_DISCARD:
        return vd_co_pdiscard(node, offset, bytes);
    case NT_STATUS:
        return vd_co_block_status(node, true, offset, bytes, &pnum, &map, &file);
    case NT_TRUNCATE:
        return vd_co_truncate(node, offset, true, VD_PREALLOC_OFF, NULL);
    }
    return -EINVAL;
}

#endif
