/*
 * The blkdebug filter (design.md §8, docs/filters.md): passes every request
 * to its "image" child and fails the ones its rules select. Rules are armed
 * by named events (vd_debug_event, raised by format drivers just before a
 * metadata write, or by this node itself for each request it sees), so a
 * test can say "fail the write that follows l2_update" or "fail the flush".
 *
 * Rules, in QEMU's option style:
 *   inject-error.N.{event,state,errno,sector,once,immediately,iotype,skip}
 *   set-state.N.{event,state,new_state}
 * and the shorthand of one inject-error rule given at the top level
 * (event=write_aio,errno=5,once=on,iotype=write,skip=2).
 *
 * The node is not flagged is_filter: the core keeps filter nodes at a fixed
 * size, and a format above must be able to grow the image through it.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "filters/filter-common.h"

/* I/O kinds a rule applies to (iotype=). */
enum {
    BLKDEBUG_IO_READ = 1 << 0,
    BLKDEBUG_IO_WRITE = 1 << 1,
    BLKDEBUG_IO_WRITE_ZEROES = 1 << 2,
    BLKDEBUG_IO_DISCARD = 1 << 3,
    BLKDEBUG_IO_FLUSH = 1 << 4,
    BLKDEBUG_IO_BLOCK_STATUS = 1 << 5,
    BLKDEBUG_IO_ALL = (1 << 6) - 1,
};

/* Rules are few in practice; the bound keeps option parsing (quadratic) cheap. */
#define BLKDEBUG_MAX_RULES 1024

static const char *const g_blkdebug_iotype_names[] = {
    "read", "write", "write-zeroes", "discard", "flush", "block-status", NULL,
};

typedef enum BlkdebugAction {
    BLKDEBUG_INJECT_ERROR,
    BLKDEBUG_SET_STATE,
} BlkdebugAction;

typedef struct BlkdebugRule {
    BlkdebugAction action;
    VdDebugEvent event;
    int64_t state;           /* the rule applies in this state only; 0: any */
    /* inject-error */
    int error;               /* positive errno returned to the request */
    int64_t offset;          /* byte offset of the sector a request must touch; -1: any */
    bool once;               /* fire once, then never again */
    bool immediately;        /* fail without first yielding to the event loop */
    unsigned iotypes;        /* BLKDEBUG_IO_* */
    uint64_t skip;           /* matching requests let through before failing */
    bool active;             /* armed by its event */
    bool spent;              /* a once rule that fired */
    /* set-state */
    int64_t new_state;
} BlkdebugRule;

typedef struct BlkdebugState {
    BlkdebugRule *rules;     /* in option order (inject-error, then set-state) */
    size_t n_rules;
    int64_t state;           /* starts at 1, as in QEMU */
    uint64_t align;          /* request alignment asked for (0: the child's) */
    uint64_t max_transfer;
} BlkdebugState;

/* ---- options ------------------------------------------------------------------------ */

static int blkdebug_parse_iotype(VdJson *v, const char *what, unsigned *out, VdError **errp)
{
    *out = 0;
    if (vd_json_type(v) == VD_JSON_ARRAY) {
        for (size_t i = 0; i < vd_json_array_size(v); i++) {
            unsigned one;
            if (blkdebug_parse_iotype(vd_json_array_get(v, i), what, &one, errp) < 0) {
                return -EINVAL;
            }
            *out |= one;
        }
        return 0;
    }
    const char *str = vd_json_get_string(v);
    if (!str) {
        vd_error_setg(errp, EINVAL, "blkdebug: %s.iotype must be a string or a list", what);
        return -EINVAL;
    }
    /* "read,write" (written "read,,write" in dotted options) or "read|write" */
    const char *p = str;
    while (*p) {
        size_t len = strcspn(p, ",|");
        int idx = -1;
        for (int i = 0; g_blkdebug_iotype_names[i]; i++) {
            if (strlen(g_blkdebug_iotype_names[i]) == len &&
                !strncmp(g_blkdebug_iotype_names[i], p, len)) {
                idx = i;
            }
        }
        if (idx < 0) {
            vd_error_setg(errp, EINVAL, "blkdebug: %s.iotype: unknown I/O type '%.*s' "
                          "(read, write, write-zeroes, discard, flush, block-status)",
                          what, (int)len, p);
            return -EINVAL;
        }
        *out |= 1u << idx;
        p += len;
        if (*p) {
            p++;
        }
    }
    if (!*out) {
        vd_error_setg(errp, EINVAL, "blkdebug: %s.iotype is empty", what);
        return -EINVAL;
    }
    return 0;
}

/* Parse one rule object (consumed); what names it in messages ("inject-error.0"). */
static int blkdebug_parse_rule(VdOpts *o, BlkdebugAction action, const char *what,
                               BlkdebugRule *r, VdError **errp)
{
    char *event = NULL;
    int64_t state, sector;
    uint64_t err;
    int ret = -EINVAL;

    memset(r, 0, sizeof(*r));
    r->action = action;
    if (vd_opts_take_str(o, "event", NULL, &event, errp) < 0 ||
        vd_opts_take_int(o, "state", 0, &state, errp) < 0) {
        goto out;
    }
    if (!event) {
        vd_error_setg(errp, EINVAL, "blkdebug: %s.event is missing", what);
        goto out;
    }
    int ev = vd_debug_event_from_name(event);
    if (ev < 0) {
        vd_error_setg(errp, EINVAL, "blkdebug: %s.event: unknown event '%s'", what, event);
        goto out;
    }
    if (state < 0) {
        vd_error_setg(errp, EINVAL, "blkdebug: %s.state: invalid state %" PRId64, what, state);
        goto out;
    }
    r->event = (VdDebugEvent)ev;
    r->state = state;

    if (action == BLKDEBUG_SET_STATE) {
        VdJson *ns = vd_opts_lookup(o, "new_state");
        if (!ns) {
            vd_error_setg(errp, EINVAL, "blkdebug: %s.new_state is missing", what);
            goto out;
        }
        if (vd_opts_take_int(o, "new_state", 0, &r->new_state, errp) < 0) {
            goto out;
        }
        if (r->new_state < 1) {
            vd_error_setg(errp, EINVAL, "blkdebug: %s.new_state: invalid state %" PRId64
                          " (states start at 1)", what, r->new_state);
            goto out;
        }
    } else {
        if (vd_opts_take_uint(o, "errno", EIO, &err, errp) < 0 ||
            vd_opts_take_int(o, "sector", -1, &sector, errp) < 0 ||
            vd_opts_take_bool(o, "once", false, &r->once, errp) < 0 ||
            vd_opts_take_bool(o, "immediately", false, &r->immediately, errp) < 0 ||
            vd_opts_take_uint(o, "skip", 0, &r->skip, errp) < 0) {
            goto out;
        }
        if (err == 0 || err > 4095) {
            vd_error_setg(errp, EINVAL, "blkdebug: %s.errno: invalid error number %" PRIu64,
                          what, err);
            goto out;
        }
        if (sector < -1 || sector > INT64_MAX / 512) {
            vd_error_setg(errp, EINVAL, "blkdebug: %s.sector: invalid sector %" PRId64, what,
                          sector);
            goto out;
        }
        r->error = (int)err;
        r->offset = sector < 0 ? -1 : sector * 512;
        r->iotypes = BLKDEBUG_IO_ALL;
        VdJson *io = vd_opts_lookup(o, "iotype");
        if (io) {
            if (blkdebug_parse_iotype(io, what, &r->iotypes, errp) < 0) {
                goto out;
            }
            vd_json_object_del(o, "iotype");
        }
    }
    char msg[96];
    snprintf(msg, sizeof(msg), "blkdebug rule %s", what);
    ret = vd_opts_check_empty(o, msg, errp) < 0 ? -EINVAL : 0;
out:
    free(event);
    return ret;
}

static int blkdebug_add_rule(BlkdebugState *s, VdOpts *o, BlkdebugAction action,
                             const char *what, VdError **errp)
{
    if (vd_json_type(o) != VD_JSON_OBJECT) {
        vd_error_setg(errp, EINVAL, "blkdebug: %s must be an object of rule options", what);
        return -EINVAL;
    }
    if (s->n_rules >= BLKDEBUG_MAX_RULES) {
        vd_error_setg(errp, EINVAL, "blkdebug: %s: more than %d rules", what,
                      BLKDEBUG_MAX_RULES);
        return -EINVAL;
    }
    BlkdebugRule *n = realloc(s->rules, (s->n_rules + 1) * sizeof(*n));
    if (!n) {
        vd_error_setg(errp, ENOMEM, "blkdebug: out of memory for rules");
        return -ENOMEM;
    }
    s->rules = n;
    if (blkdebug_parse_rule(o, action, what, &s->rules[s->n_rules], errp) < 0) {
        return -EINVAL;
    }
    s->n_rules++;
    return 0;
}

/*
 * Take the rule list under key: an array (JSON) or an object whose keys are
 * indices (dotted "key.0.event=..."), applied in index order.
 */
static int blkdebug_take_rules(BlkdebugState *s, VdOpts *options, const char *key,
                               BlkdebugAction action, VdError **errp)
{
    VdJson *list = vd_opts_lookup(options, key);
    char what[64];
    int ret = 0;

    if (!list) {
        return 0;
    }
    vd_json_ref(list);
    vd_json_object_del(options, key);
    if (vd_json_type(list) == VD_JSON_ARRAY) {
        for (size_t i = 0; i < vd_json_array_size(list) && ret == 0; i++) {
            snprintf(what, sizeof(what), "%s.%zu", key, i);
            ret = blkdebug_add_rule(s, vd_json_array_get(list, i), action, what, errp);
        }
    } else if (vd_json_type(list) == VD_JSON_OBJECT &&
               vd_json_object_size(list) > BLKDEBUG_MAX_RULES) {
        vd_error_setg(errp, EINVAL, "blkdebug: %s: more than %d rules", key, BLKDEBUG_MAX_RULES);
        ret = -EINVAL;
    } else if (vd_json_type(list) == VD_JSON_OBJECT) {
        size_t n = vd_json_object_size(list);
        uint64_t prev = 0;
        size_t taken = 0;
        bool first = true;
        /* visit indices in increasing order: pick the smallest above prev each round */
        for (size_t round = 0; round < n && ret == 0; round++) {
            const char *best_key = NULL;
            uint64_t best = UINT64_MAX;
            for (size_t i = 0; i < n; i++) {
                VdJson *v;
                const char *k = vd_json_object_entry(list, i, &v);
                uint64_t idx;
                if (vd_parse_uint(k, &idx) < 0 || idx == UINT64_MAX) {
                    vd_error_setg(errp, EINVAL, "blkdebug: %s.%s: rule index must be a number",
                                  key, k);
                    ret = -EINVAL;
                    break;
                }
                if ((first || idx > prev) && (!best_key || idx < best)) {
                    best = idx;
                    best_key = k;
                }
            }
            if (ret < 0 || !best_key) {
                break;
            }
            snprintf(what, sizeof(what), "%s.%s", key, best_key);
            ret = blkdebug_add_rule(s, vd_json_object_get(list, best_key), action, what, errp);
            prev = best;
            first = false;
            taken++;
        }
        if (ret == 0 && taken < n) {
            /* "0" and "00" name the same index */
            vd_error_setg(errp, EINVAL, "blkdebug: %s: two rules have the same index", key);
            ret = -EINVAL;
        }
    } else {
        vd_error_setg(errp, EINVAL, "blkdebug: %s must be a list of rules (%s.0.event=...)", key,
                      key);
        ret = -EINVAL;
    }
    vd_json_unref(list);
    return ret;
}

/* The one-rule shorthand: event=...,errno=...,once=... at the top level. */
static int blkdebug_take_shorthand_rule(BlkdebugState *s, VdOpts *options, VdError **errp)
{
    static const char *const keys[] = {
        "event", "state", "errno", "sector", "once", "immediately", "iotype", "skip", NULL,
    };
    if (!vd_opts_lookup(options, "event")) {
        return 0;
    }
    VdOpts *rule = vd_json_object();
    for (int i = 0; keys[i]; i++) {
        VdJson *v = vd_opts_lookup(options, keys[i]);
        if (v) {
            vd_json_object_put(rule, keys[i], vd_json_ref(v));
            vd_json_object_del(options, keys[i]);
        }
    }
    int ret = blkdebug_add_rule(s, rule, BLKDEBUG_INJECT_ERROR, "event", errp);
    vd_json_unref(rule);
    return ret;
}

/* "blkdebug:[config]:image" names; config files are not supported. */
static int blkdebug_parse_filename(const char *filename, VdOpts *options, VdError **errp)
{
    if (strncmp(filename, "blkdebug:", 9)) {
        vd_error_setg(errp, EINVAL, "%s: a blkdebug filename must start with 'blkdebug:'",
                      filename);
        return -EINVAL;
    }
    const char *cfg = filename + 9;
    const char *colon = strchr(cfg, ':');
    if (!colon) {
        vd_error_setg(errp, EINVAL, "%s: a blkdebug filename has the form "
                      "'blkdebug::<image>'", filename);
        return -EINVAL;
    }
    if (colon != cfg) {
        vd_error_setg(errp, ENOTSUP, "%s: blkdebug config files are not supported; give rules "
                      "as options (inject-error.0.event=...)", filename);
        return -ENOTSUP;
    }
    if (!colon[1]) {
        vd_error_setg(errp, EINVAL, "%s: the blkdebug filename names no image", filename);
        return -EINVAL;
    }
    vd_opts_set(options, "image.filename", colon + 1);
    return 0;
}

extern const VdDriver vd_driver_blkdebug;

static int coroutine_fn blkdebug_open_options(VdNode *node, VdOpts *options, VdError **errp)
{
    VD_CO_ASSERT();
    BlkdebugState *s = node->opaque;

    s->state = 1;
    /* a filename handed down by the core (protocol-style open) */
    int ret = vd_driver_take_filename(&vd_driver_blkdebug, options, errp);
    if (ret < 0) {
        return ret;
    }
    if (vd_opts_take_size(options, "align", 0, &s->align, errp) < 0 ||
        vd_opts_take_size(options, "max-transfer", 0, &s->max_transfer, errp) < 0) {
        return -EINVAL;
    }
    if (s->align && (!VD_IS_POW2(s->align) || s->align > 64 * VD_MiB)) {
        vd_error_setg(errp, EINVAL, "blkdebug: align %" PRIu64 " is not a power of two up to 64M",
                      s->align);
        return -EINVAL;
    }
    if (s->max_transfer && (s->max_transfer > INT32_MAX ||
                            (s->align && s->max_transfer % s->align))) {
        vd_error_setg(errp, EINVAL, "blkdebug: max-transfer %" PRIu64 " must be a multiple of "
                      "align and below 2G", s->max_transfer);
        return -EINVAL;
    }
    if (blkdebug_take_rules(s, options, "inject-error", BLKDEBUG_INJECT_ERROR, errp) < 0 ||
        blkdebug_take_rules(s, options, "set-state", BLKDEBUG_SET_STATE, errp) < 0 ||
        blkdebug_take_shorthand_rule(s, options, errp) < 0) {
        return -EINVAL;
    }
    return 0;
}

static void coroutine_fn blkdebug_co_close(VdNode *node)
{
    VD_CO_ASSERT();
    BlkdebugState *s = node->opaque;
    free(s->rules);
    s->rules = NULL;
    s->n_rules = 0;
}

static int coroutine_fn blkdebug_co_open(VdNode *node, VdOpts *options, int flags,
                                         VdError **errp)
{
    VD_CO_ASSERT();
    /* the core does not call co_close after a failed open: free the rules here */
    if (blkdebug_open_options(node, options, errp) < 0 ||
        !vd_open_child(NULL, options, "image", node, VD_CHILD_FILE, false, errp)) {
        blkdebug_co_close(node);
        return -EINVAL;
    }
    node->supported_write_flags = VD_REQ_FUA;
    node->supported_zero_flags = VD_REQ_FUA | VD_REQ_MAY_UNMAP | VD_REQ_NO_FALLBACK;
    return 0;
}

static void blkdebug_refresh_limits(VdNode *node)
{
    BlkdebugState *s = node->opaque;
    vd_filter_refresh_limits(node);
    node->bl.request_alignment = VD_MAX(node->bl.request_alignment, (uint32_t)s->align);
    if (s->max_transfer && (node->bl.max_transfer <= 0 ||
                            (int64_t)s->max_transfer < node->bl.max_transfer)) {
        node->bl.max_transfer = (int64_t)s->max_transfer;
    }
}

/* ---- events and rules --------------------------------------------------------------- */

/*
 * Apply the rules of event ev in the current state: arm inject-error rules,
 * move to the new state of set-state rules (all rules see the state the event
 * found, so one event moves one step). Never yields.
 */
static void blkdebug_debug_event(VdNode *node, VdDebugEvent ev)
{
    BlkdebugState *s = node->opaque;
    int64_t new_state = s->state;

    for (size_t i = 0; i < s->n_rules; i++) {
        BlkdebugRule *r = &s->rules[i];
        if (r->event != ev || r->spent || (r->state && r->state != s->state)) {
            continue;
        }
        if (r->action == BLKDEBUG_INJECT_ERROR) {
            r->active = true;
        } else {
            new_state = r->new_state;
        }
    }
    s->state = new_state;
}

/*
 * Fail this request if an armed rule matches its kind and range: returns the
 * rule's -errno (after a trip through the event loop unless immediately=on),
 * or 0 to let it through. bytes == 0 (flush) never matches a sector rule.
 */
static int coroutine_fn blkdebug_check(VdNode *node, unsigned iotype, int64_t offset,
                                       int64_t bytes)
{
    VD_CO_ASSERT();
    BlkdebugState *s = node->opaque;

    for (size_t i = 0; i < s->n_rules; i++) {
        BlkdebugRule *r = &s->rules[i];
        if (!r->active || r->action != BLKDEBUG_INJECT_ERROR || !(r->iotypes & iotype)) {
            continue;
        }
        if (r->offset >= 0 && !(offset < r->offset + 512 && r->offset < offset + bytes)) {
            continue;
        }
        if (r->skip > 0) {
            r->skip--;
            continue;
        }
        int err = r->error;
        bool immediately = r->immediately;
        if (r->once) {
            r->active = false;
            r->spent = true;
        }
        if (!immediately) {
            vd_co_yield_to_loop();
        }
        return -err;
    }
    return 0;
}

/* ---- I/O ------------------------------------------------------------------------------ */

/* A request arrives: its debug event first, then the rules for its kind. */
static int coroutine_fn blkdebug_event_check(VdNode *node, VdDebugEvent event, unsigned iotype,
                                             int64_t offset, int64_t bytes)
{
    VD_CO_ASSERT();
    blkdebug_debug_event(node, event);
    return blkdebug_check(node, iotype, offset, bytes);
}

static int coroutine_fn blkdebug_co_preadv(VdNode *node, int64_t offset, int64_t bytes,
                                           VdIOVector *qiov, size_t qiov_offset, int flags)
{
    VD_CO_ASSERT();
    int ret = blkdebug_event_check(node, VD_DBG_READ_AIO, BLKDEBUG_IO_READ, offset, bytes);
    if (ret < 0) {
        return ret;
    }
    return vd_co_preadv(node->file->node, offset, bytes, qiov, qiov_offset, flags);
}

static int coroutine_fn blkdebug_co_pwritev(VdNode *node, int64_t offset, int64_t bytes,
                                            VdIOVector *qiov, size_t qiov_offset, int flags)
{
    VD_CO_ASSERT();
    int ret = blkdebug_event_check(node, VD_DBG_WRITE_AIO, BLKDEBUG_IO_WRITE, offset, bytes);
    if (ret < 0) {
        return ret;
    }
    return vd_co_pwritev(node->file->node, offset, bytes, qiov, qiov_offset, flags);
}

static int coroutine_fn blkdebug_co_pwrite_zeroes(VdNode *node, int64_t offset, int64_t bytes,
                                                  int flags)
{
    VD_CO_ASSERT();
    int ret = blkdebug_event_check(node, VD_DBG_PWRITEV_ZERO, BLKDEBUG_IO_WRITE_ZEROES, offset, bytes);
    if (ret < 0) {
        return ret;
    }
    return vd_co_pwrite_zeroes(node->file->node, offset, bytes, flags);
}

static int coroutine_fn blkdebug_co_pdiscard(VdNode *node, int64_t offset, int64_t bytes)
{
    VD_CO_ASSERT();
    int ret = blkdebug_event_check(node, VD_DBG_PDISCARD, BLKDEBUG_IO_DISCARD, offset, bytes);
    if (ret < 0) {
        return ret;
    }
    return vd_co_pdiscard(node->file->node, offset, bytes);
}

/* The core flushes the child after this returns 0 (and never if it fails). */
static int coroutine_fn blkdebug_co_flush_to_os(VdNode *node)
{
    VD_CO_ASSERT();
    blkdebug_debug_event(node, VD_DBG_FLUSH_TO_OS);
    blkdebug_debug_event(node, VD_DBG_FLUSH_TO_DISK);
    return blkdebug_check(node, BLKDEBUG_IO_FLUSH, 0, 0);
}

static int coroutine_fn blkdebug_co_block_status(VdNode *node, bool want_zero, int64_t offset,
                                                 int64_t bytes, int64_t *pnum, int64_t *map,
                                                 VdNode **file)
{
    VD_CO_ASSERT();
    int ret = blkdebug_check(node, BLKDEBUG_IO_BLOCK_STATUS, offset, bytes);
    if (ret < 0) {
        return ret;
    }
    return vd_filter_child_block_status(node, want_zero, offset, bytes, pnum, map, file);
}

const VdDriver vd_driver_blkdebug = {
    .format_name = "blkdebug",
    .protocol_name = "blkdebug",
    .instance_size = sizeof(BlkdebugState),
    .supported_write_flags = VD_REQ_FUA,
    .supported_zero_flags = VD_REQ_FUA | VD_REQ_MAY_UNMAP | VD_REQ_NO_FALLBACK,
    .parse_filename = blkdebug_parse_filename,
    .co_open = blkdebug_co_open,
    .co_close = blkdebug_co_close,
    .refresh_limits = blkdebug_refresh_limits,
    .co_preadv = blkdebug_co_preadv,
    .co_pwritev = blkdebug_co_pwritev,
    .co_pwrite_zeroes = blkdebug_co_pwrite_zeroes,
    .co_pdiscard = blkdebug_co_pdiscard,
    .co_flush_to_os = blkdebug_co_flush_to_os,
    .co_block_status = blkdebug_co_block_status,
    .co_truncate = vd_filter_co_truncate,
    .co_getlength = vd_filter_co_getlength,
    .debug_event = blkdebug_debug_event,
};
