/*
 * Helpers shared by the file protocol's unit tests (test-file.c,
 * test-file-node.c): a scratch directory, paths in it, open(2) flags of an fd.
 */
#ifndef FILETEST_H
#define FILETEST_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

static char g_dir[256];

/* name inside the scratch directory (one of 8 rotating buffers) */
static inline char *test_path(const char *name)
{
    static char buf[8][512];
    static int n;
    char *p = buf[n++ % 8];
    snprintf(p, 512, "%s/%s", g_dir, name);
    return p;
}

/* Create the scratch directory under $VDISK_TEST_DIR or /var/tmp. */
static inline int test_dir_create(const char *what)
{
    const char *base = getenv("VDISK_TEST_DIR");
    snprintf(g_dir, sizeof(g_dir), "%s/vdisk-test-%s-XXXXXX", base ? base : "/var/tmp", what);
    return mkdtemp(g_dir) ? 0 : -1;
}

static inline int test_dir_remove(void)
{
    char cmd[400];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g_dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* The flags /proc reports for fd (octal "flags:" of fdinfo). */
static inline int test_fd_flags(int fd)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    int flags = -1;
    while (fgets(line, sizeof(line), f)) {
        if (!strncmp(line, "flags:", 6)) {
            flags = (int)strtol(line + 6, NULL, 8);
        }
    }
    fclose(f);
    return flags;
}

#endif
