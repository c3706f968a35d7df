/*
 * Category tracing: VD_TRACE() tests g_vd_log_mask inline, so a disabled
 * category costs one predictable branch; enabled ones format a line here.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE   /* vasprintf */
#endif
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "vdisk/log.h"

unsigned g_vd_log_mask;

static FILE *g_log_file;
static pthread_once_t g_log_once = PTHREAD_ONCE_INIT;

static const struct {
    const char *name;
    VdLogCategory cat;
} log_categories[] = {
    { "aio", VD_LOG_AIO },
    { "coroutine", VD_LOG_COROUTINE },
    { "block", VD_LOG_BLOCK },
    { "file", VD_LOG_FILE },
    { "qcow2", VD_LOG_QCOW2 },
    { "qed", VD_LOG_QED },
    { "nbd", VD_LOG_NBD },
    { "monitor", VD_LOG_MONITOR },
    { "export", VD_LOG_EXPORT },
    { "tools", VD_LOG_TOOLS },
};

static const char *log_category_name(VdLogCategory cat)
{
    for (size_t i = 0; i < VD_ARRAY_SIZE(log_categories); i++) {
        if (log_categories[i].cat == cat) {
            return log_categories[i].name;
        }
    }
    return "?";
}

/* Adds the listed categories to the mask. "all" enables everything, "none"
 * clears the mask. Empty elements are ignored. On an unknown name nothing
 * changes and -EINVAL is returned. */
int vd_log_enable(const char *list)
{
    unsigned mask = g_vd_log_mask;
    const char *p = list ? list : "";

    while (*p) {
        size_t n = strcspn(p, ",");
        if (n > 0) {
            bool found = false;
            if (n == 3 && !strncmp(p, "all", 3)) {
                for (size_t i = 0; i < VD_ARRAY_SIZE(log_categories); i++) {
                    mask |= log_categories[i].cat;
                }
                found = true;
            } else if (n == 4 && !strncmp(p, "none", 4)) {
                mask = 0;
                found = true;
            }
            for (size_t i = 0; !found && i < VD_ARRAY_SIZE(log_categories); i++) {
                if (strlen(log_categories[i].name) == n &&
                    !strncmp(p, log_categories[i].name, n)) {
                    mask |= log_categories[i].cat;
                    found = true;
                }
            }
            if (!found) {
                return -EINVAL;
            }
        }
        p += n;
        if (*p == ',') {
            p++;
        }
    }
    g_vd_log_mask = mask;
    return 0;
}

static void log_init_once(void)
{
    const char *file = getenv("VDISK_TRACE_FILE");
    if (file && *file) {
        FILE *f = fopen(file, "a");
        if (f) {
            setvbuf(f, NULL, _IOLBF, 0);
            g_log_file = f;
        } else {
            fprintf(stderr, "vdisk: cannot open VDISK_TRACE_FILE '%s': %s\n",
                    file, strerror(errno));
        }
    }
    const char *list = getenv("VDISK_TRACE");
    if (list && *list && vd_log_enable(list) < 0) {
        fprintf(stderr, "vdisk: VDISK_TRACE='%s' names an unknown category "
                "(known: all", list);
        for (size_t i = 0; i < VD_ARRAY_SIZE(log_categories); i++) {
            fprintf(stderr, ", %s", log_categories[i].name);
        }
        fprintf(stderr, ")\n");
    }
}

void vd_log_init(void)
{
    pthread_once(&g_log_once, log_init_once);
}

/* One line per call: "<sec.usec> [tid] <category>: message". The line is
 * formatted first and written with one stdio call so threads do not mix. */
void vd_log_write(VdLogCategory cat, const char *fmt, ...)
{
    char *msg = NULL;
    va_list ap;
    va_start(ap, fmt);
    int n = vasprintf(&msg, fmt, ap);
    va_end(ap);
    if (n < 0) {
        return;
    }
    while (n > 0 && msg[n - 1] == '\n') {
        msg[--n] = '\0';
    }
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    FILE *out = g_log_file ? g_log_file : stderr;
    fprintf(out, "%ld.%06ld [%ld] %s: %s\n", (long)ts.tv_sec, ts.tv_nsec / 1000L,
            (long)syscall(SYS_gettid), log_category_name(cat), msg);
    free(msg);
}

/* Honour VDISK_TRACE without every program having to call vd_log_init(). */
__attribute__((constructor)) static void log_constructor(void)
{
    vd_log_init();
}
