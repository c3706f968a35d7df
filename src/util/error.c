/*
 * Error objects for the control path (see include/vdisk/error.h) and the
 * "<prog>: message" reporting helpers the tools use.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE   /* vasprintf */
#endif
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vdisk/error.h"

static char *g_error_progname;

static char *error_vformat(const char *fmt, va_list ap)
{
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0) {
        return NULL;
    }
    return s;
}

static void error_set_msg(VdError **errp, int code, char *msg)
{
    if (!errp || *errp) {
        free(msg);
        return;
    }
    VdError *err = calloc(1, sizeof(*err));
    if (!err) {
        free(msg);
        return;
    }
    err->code = code < 0 ? -code : code;
    if (err->code == 0) {
        err->code = EINVAL;
    }
    err->msg = msg ? msg : strdup("(out of memory formatting error message)");
    *errp = err;
}

void vd_error_setg(VdError **errp, int code, const char *fmt, ...)
{
    if (!errp || *errp) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    char *msg = error_vformat(fmt, ap);
    va_end(ap);
    error_set_msg(errp, code, msg);
}

void vd_error_setg_errno(VdError **errp, int code, const char *fmt, ...)
{
    if (!errp || *errp) {
        return;
    }
    int pos = code < 0 ? -code : code;
    va_list ap;
    va_start(ap, fmt);
    char *msg = error_vformat(fmt, ap);
    va_end(ap);
    if (msg) {
        char *full = NULL;
        if (asprintf(&full, "%s: %s", msg, strerror(pos)) >= 0) {
            free(msg);
            msg = full;
        }
    }
    error_set_msg(errp, code, msg);
}

void vd_error_prepend(VdError **errp, const char *fmt, ...)
{
    if (!errp || !*errp) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    char *prefix = error_vformat(fmt, ap);
    va_end(ap);
    if (!prefix) {
        return;
    }
    char *full = NULL;
    if (asprintf(&full, "%s%s", prefix, (*errp)->msg ? (*errp)->msg : "") >= 0) {
        free((*errp)->msg);
        (*errp)->msg = full;
    }
    free(prefix);
}

void vd_error_propagate(VdError **dst, VdError *src)
{
    if (!src) {
        return;
    }
    if (dst && !*dst) {
        *dst = src;
    } else {
        vd_error_free(src);
    }
}

void vd_error_free(VdError *err)
{
    if (err) {
        free(err->msg);
        free(err);
    }
}

void vd_error_free_and_clear(VdError **errp)
{
    if (errp) {
        vd_error_free(*errp);
        *errp = NULL;
    }
}

void vd_error_report_err(const char *prog, const VdError *err)
{
    const char *msg = err && err->msg ? err->msg : "unknown error";
    if (prog) {
        fprintf(stderr, "%s: %s\n", prog, msg);
    } else {
        fprintf(stderr, "%s\n", msg);
    }
}

static void error_vreport(const char *kind, const char *fmt, va_list ap)
{
    char *msg = error_vformat(fmt, ap);
    if (g_error_progname) {
        fprintf(stderr, "%s: %s%s\n", g_error_progname, kind, msg ? msg : fmt);
    } else {
        fprintf(stderr, "%s%s\n", kind, msg ? msg : fmt);
    }
    free(msg);
}

void vd_error_report(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    error_vreport("", fmt, ap);
    va_end(ap);
}

void vd_warn_report(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    error_vreport("warning: ", fmt, ap);
    va_end(ap);
}

/* Keeps a copy of the base name of progname (NULL clears it). Not thread-safe:
 * call once from main() before starting threads. */
void vd_error_set_progname(const char *progname)
{
    char *copy = NULL;
    if (progname) {
        const char *slash = strrchr(progname, '/');
        if (slash && slash[1]) {
            progname = slash + 1;
        }
        copy = strdup(progname);
    }
    free(g_error_progname);
    g_error_progname = copy;
}

const char *vd_error_get_progname(void)
{
    return g_error_progname;
}
