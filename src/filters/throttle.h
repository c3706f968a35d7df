/*
 * I/O throttling (docs/filters.md, "throttle"): QEMU's leaky buckets
 * (util/throttle.c semantics, throttle-limits.c), throttle groups whose
 * members share one budget round-robin (throttle-groups.c) and the member
 * side the throttle filter driver (throttle.c) uses.
 */
#ifndef VDISK_FILTERS_THROTTLE_H
#define VDISK_FILTERS_THROTTLE_H

#include "vdisk/throttle.h"
#include "vdisk/coroutine.h"

/* ---- leaky buckets (throttle-limits.c) ------------------------------------ */

typedef enum VdThrottleBucketType {
    VD_THROTTLE_BPS_TOTAL,
    VD_THROTTLE_BPS_READ,
    VD_THROTTLE_BPS_WRITE,
    VD_THROTTLE_OPS_TOTAL,
    VD_THROTTLE_OPS_READ,
    VD_THROTTLE_OPS_WRITE,
    VD_THROTTLE_BUCKETS,
} VdThrottleBucketType;

/* Largest value of any limit (QEMU's THROTTLE_VALUE_MAX). */
#define VD_THROTTLE_VALUE_MAX 1000000000000000ULL

typedef struct VdLeakyBucket {
    uint64_t avg;             /* units per second; 0 = no limit */
    uint64_t max;             /* burst rate (units per second), 0 = none */
    uint64_t burst_length;    /* seconds the burst rate may last (>= 1) */
    double level;             /* units in the bucket */
    double burst_level;       /* units in the burst bucket (burst_length > 1) */
} VdLeakyBucket;

typedef struct VdThrottleConfig {
    VdLeakyBucket buckets[VD_THROTTLE_BUCKETS];
    uint64_t op_size;         /* iops-size: a request of n*op_size bytes counts n ops */
} VdThrottleConfig;

typedef struct VdThrottleState {
    VdThrottleConfig cfg;
    int64_t previous_leak;    /* clock of the last leak */
} VdThrottleState;

/* A config with no limit (every burst_length 1). */
void vd_throttle_config_init(VdThrottleConfig *cfg);
/* Any limit set? */
bool vd_throttle_config_enabled(const VdThrottleConfig *cfg);
/* QEMU's throttle_is_valid: 0 or -EINVAL with a message naming the limit. */
int vd_throttle_config_check(const VdThrottleConfig *cfg, VdError **errp);
/* Apply keys of a ThrottleLimits object ("iops-total", ...; prefix "x-"
 * when x_prefix) found in opts to cfg, consuming them. Bad values: -EINVAL. */
int vd_throttle_limits_take(VdOpts *opts, bool x_prefix, VdThrottleConfig *cfg,
                            VdError **errp);
/* cfg as a full ThrottleLimits object (every key, as QEMU's qom-get). */
VdJson *vd_throttle_limits_to_json(const VdThrottleConfig *cfg);
/* Value of one limit by its ThrottleLimits name, -1 if unknown. */
int64_t vd_throttle_limit_get(const VdThrottleConfig *cfg, const char *name);

/* Install cfg: buckets emptied, leak clock reset to now (throttle_config). */
void vd_throttle_state_config(VdThrottleState *ts, const VdThrottleConfig *cfg, int64_t now);
/* Leak the buckets up to now, then the ns a request of this direction must
 * still wait (0: it may go). */
int64_t vd_throttle_compute_wait(VdThrottleState *ts, bool is_write, int64_t now);
/* Charge a request that goes now: bytes on the bps buckets, 1 op (or
 * bytes / iops-size when larger) on the iops buckets. */
void vd_throttle_account(VdThrottleState *ts, bool is_write, uint64_t bytes);

/* ---- group members (throttle-groups.c) ------------------------------------ */

typedef struct VdThrottleGroup VdThrottleGroup;
typedef struct VdThrottleWaiter VdThrottleWaiter;

/* One throttled node's place in a group. Lives inside the filter's state;
 * private fields: use the functions below. */
typedef struct VdThrottleMember {
    VdThrottleGroup *group;
    char owner[64];                 /* node name, for errors */
    VdAioContext *ctx;              /* where its requests and timers run; NULL detached */
    VdTimer *timer[2];              /* [is_write]; member's context */
    VdBH *kick[2];                  /* arms timer[] from another thread */
    int limits_disabled;            /* atomic: drains in progress (requests pass) */
    /* under the group lock */
    unsigned pending[2];            /* requests queued or woken but not yet charged */
    bool armed[2];                  /* this member holds the group's timer of a direction */
    int64_t arm_at[2];              /* deadline for kick[] */
    /* member's context only */
    VdThrottleWaiter *head[2], *tail[2];
    struct VdThrottleMember *next;  /* in the group, under the group lock */
} VdThrottleMember;

/* Join group name. Main thread. ctx: the node's context. */
int vd_throttle_member_register(VdThrottleMember *m, const char *group, const char *owner,
                                VdAioContext *ctx, VdError **errp);
/* Leave (no request may be queued: close drains first). Member's thread. */
void vd_throttle_member_unregister(VdThrottleMember *m);
/* Wait (yield) until the group lets a request of bytes go, then charge it.
 * FIFO per direction; reads and writes are queued apart. Member's thread. */
void coroutine_fn vd_throttle_member_intercept(VdThrottleMember *m, int64_t bytes,
                                               bool is_write);
/* A drain covering the node begins/ends: queued requests go (charged: the
 * buckets keep the debt, so later requests wait it off). Member's thread. */
void vd_throttle_member_drain_begin(VdThrottleMember *m);
void vd_throttle_member_drain_end(VdThrottleMember *m);
/* Context move (drained): drop timers/BHs of the old context, make new ones. */
void vd_throttle_member_detach(VdThrottleMember *m);
void vd_throttle_member_attach(VdThrottleMember *m, VdAioContext *ctx);

#endif
