/*
 * Error objects for the control path (open, create, options, tools).
 * Data-path functions return a negative errno instead. Convention: the
 * VdError **errp parameter comes last; it may be NULL (caller does not care)
 * and is left untouched on success. Set it at most once.
 */
#ifndef VDISK_ERROR_H
#define VDISK_ERROR_H

#include "vdisk/common.h"

VD_EXTERN_C_BEGIN

typedef struct VdError {
    int code;   /* positive errno value (EINVAL, EIO, ...) */
    char *msg;  /* full message: says what and where (file, offset, field) */
} VdError;

/* Set *errp to a new error (if errp != NULL and *errp == NULL). code is a
 * positive errno; a negative one is accepted and negated. */
void vd_error_setg(VdError **errp, int code, const char *fmt, ...) VD_PRINTF(3, 4);

/* As vd_error_setg, appending ": strerror(code)" to the message. */
void vd_error_setg_errno(VdError **errp, int code, const char *fmt, ...) VD_PRINTF(3, 4);

/* Prefix an existing error's message: "<prefix><old message>". No-op if
 * errp or *errp is NULL. */
void vd_error_prepend(VdError **errp, const char *fmt, ...) VD_PRINTF(2, 3);

/* Move src into *dst (if dst is non-NULL and *dst is NULL); otherwise free src. */
void vd_error_propagate(VdError **dst, VdError *src);

void vd_error_free(VdError *err);

/* Free *errp and set it to NULL. */
void vd_error_free_and_clear(VdError **errp);

/* Print "<prog>: <msg>\n" on stderr (prog may be NULL: just the message). */
void vd_error_report_err(const char *prog, const VdError *err);

/* printf-style report on stderr with the program name set by vd_error_set_progname. */
void vd_error_report(const char *fmt, ...) VD_PRINTF(1, 2);
void vd_warn_report(const char *fmt, ...) VD_PRINTF(1, 2);
void vd_error_set_progname(const char *progname);
const char *vd_error_get_progname(void);

VD_EXTERN_C_END

#endif
