/*
 * Helpers shared by the filter unit tests: open nodes from option strings,
 * run one request in a coroutine and wait for it, a scratch directory.
 */
#ifndef FILTERTEST_H
#define FILTERTEST_H

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include "../block/nodetest.h"

#define FT_TEST(name, fn) { name, fn, NULL, NULL, NULL }

static char ft_dir[256];

#define ft_open nt_open
#define ft_open_ok nt_open_ok

/* Expect a read-write open to fail with a message containing want. */
static inline void ft_open_fails(const char *optstr, const char *want)
{
    nt_open_fails(optstr, VD_O_RDWR, want);
}

enum { FT_READ = NT_READ, FT_WRITE = NT_WRITE, FT_FLUSH = NT_FLUSH, FT_ZEROES = NT_ZEROES,
       FT_DISCARD = NT_DISCARD, FT_STATUS = NT_STATUS, FT_TRUNCATE = NT_TRUNCATE };

typedef struct FtReq {
    VdNode *node;
    int kind;
    int64_t offset, bytes;
    void *buf;
    int flags;
    int ret;
} FtReq;

static void coroutine_fn ft_req_entry(void *opaque)
{
    FtReq *r = opaque;
    r->ret = nt_request(r->node, r->kind, r->offset, r->bytes, r->buf, r->flags);
}

/* Run one request to completion from the main thread; returns its result. */
static inline int ft_io(VdNode *node, int kind, int64_t offset, int64_t bytes, void *buf,
                        int flags)
{
    FtReq r = { .node = node, .kind = kind, .offset = offset, .bytes = bytes, .buf = buf,
                .flags = flags, .ret = -EINPROGRESS };
    vd_co_run_sync(vd_node_get_context(node), ft_req_entry, &r);
    return r.ret;
}

static inline int ft_write_byte(VdNode *node, int64_t offset, int64_t bytes, int c)
{
    uint8_t *buf = malloc((size_t)bytes);
    memset(buf, c, (size_t)bytes);
    int ret = ft_io(node, FT_WRITE, offset, bytes, buf, 0);
    free(buf);
    return ret;
}

static inline const char *ft_path(const char *name)
{
    static char buf[8][512];
    static int n;
    char *p = buf[n++ % 8];
    snprintf(p, 512, "%s/%s", ft_dir, name);
    return p;
}

static inline int ft_setup(const char *what)
{
    VdError *err = NULL;
    if (vd_block_init(&err) < 0) {
        fprintf(stderr, "init: %s\n", err->msg);
        return -1;
    }
    const char *base = getenv("VDISK_TEST_DIR");
    snprintf(ft_dir, sizeof(ft_dir), "%s/vdisk-test-%s-XXXXXX", base ? base : "/var/tmp", what);
    if (!mkdtemp(ft_dir)) {
        perror("mkdtemp");
        return -1;
    }
    return 0;
}

static inline void ft_cleanup(void)
{
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", ft_dir);
    if (system(cmd) != 0) {
        fprintf(stderr, "could not remove %s\n", ft_dir);
    }
}

#endif
