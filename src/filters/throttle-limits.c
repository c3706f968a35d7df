/*
 * Leaky buckets with QEMU's semantics (util/throttle.c): each limit is a
 * bucket that requests fill (bytes or operations) and that leaks at the
 * average rate; a request may go while the bucket holds less than its size
 * (avg/10 without a burst, max * burst_length with one), and, with a burst
 * longer than a second, while a second bucket leaking at the burst rate
 * holds less than max/10. The wait is the time the bucket needs to leak the
 * excess. Pure arithmetic: the caller passes the clock.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include "filters/throttle.h"

#define NS_PER_SEC 1000000000.0

/* ThrottleLimits keys in QEMU's schema order (what qom-get prints). */
typedef enum { LIM_AVG, LIM_MAX, LIM_LENGTH } LimitField;
static const struct {
    const char *name;
    VdThrottleBucketType bucket;
    LimitField field;
} g_limits[] = {
    { "iops-total", VD_THROTTLE_OPS_TOTAL, LIM_AVG },
    { "iops-total-max", VD_THROTTLE_OPS_TOTAL, LIM_MAX },
    { "iops-total-max-length", VD_THROTTLE_OPS_TOTAL, LIM_LENGTH },
    { "iops-read", VD_THROTTLE_OPS_READ, LIM_AVG },
    { "iops-read-max", VD_THROTTLE_OPS_READ, LIM_MAX },
    { "iops-read-max-length", VD_THROTTLE_OPS_READ, LIM_LENGTH },
    { "iops-write", VD_THROTTLE_OPS_WRITE, LIM_AVG },
    { "iops-write-max", VD_THROTTLE_OPS_WRITE, LIM_MAX },
    { "iops-write-max-length", VD_THROTTLE_OPS_WRITE, LIM_LENGTH },
    { "bps-total", VD_THROTTLE_BPS_TOTAL, LIM_AVG },
    { "bps-total-max", VD_THROTTLE_BPS_TOTAL, LIM_MAX },
    { "bps-total-max-length", VD_THROTTLE_BPS_TOTAL, LIM_LENGTH },
    { "bps-read", VD_THROTTLE_BPS_READ, LIM_AVG },
    { "bps-read-max", VD_THROTTLE_BPS_READ, LIM_MAX },
    { "bps-read-max-length", VD_THROTTLE_BPS_READ, LIM_LENGTH },
    { "bps-write", VD_THROTTLE_BPS_WRITE, LIM_AVG },
    { "bps-write-max", VD_THROTTLE_BPS_WRITE, LIM_MAX },
    { "bps-write-max-length", VD_THROTTLE_BPS_WRITE, LIM_LENGTH },
};

static uint64_t *limit_field(VdThrottleConfig *cfg, size_t i)
{
    VdLeakyBucket *b = &cfg->buckets[g_limits[i].bucket];
    switch (g_limits[i].field) {
    case LIM_AVG:
        return &b->avg;
    case LIM_MAX:
        return &b->max;
    default:
        return &b->burst_length;
    }
}

void vd_throttle_config_init(VdThrottleConfig *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    for (int i = 0; i < VD_THROTTLE_BUCKETS; i++) {
        cfg->buckets[i].burst_length = 1;
    }
}

bool vd_throttle_config_enabled(const VdThrottleConfig *cfg)
{
    for (int i = 0; i < VD_THROTTLE_BUCKETS; i++) {
        if (cfg->buckets[i].avg) {
            return true;
        }
    }
    return false;
}

int vd_throttle_config_check(const VdThrottleConfig *cfg, VdError **errp)
{
    const VdLeakyBucket *b = cfg->buckets;
    bool bps = b[VD_THROTTLE_BPS_TOTAL].avg &&
               (b[VD_THROTTLE_BPS_READ].avg || b[VD_THROTTLE_BPS_WRITE].avg);
    bool ops = b[VD_THROTTLE_OPS_TOTAL].avg &&
               (b[VD_THROTTLE_OPS_READ].avg || b[VD_THROTTLE_OPS_WRITE].avg);
    bool bps_max = b[VD_THROTTLE_BPS_TOTAL].max &&
                   (b[VD_THROTTLE_BPS_READ].max || b[VD_THROTTLE_BPS_WRITE].max);
    bool ops_max = b[VD_THROTTLE_OPS_TOTAL].max &&
                   (b[VD_THROTTLE_OPS_READ].max || b[VD_THROTTLE_OPS_WRITE].max);
    if (bps || ops || bps_max || ops_max) {
        vd_error_setg(errp, EINVAL, "bps/iops/max total values and read/write values cannot "
                      "be used at the same time");
        return -EINVAL;
    }
    if (cfg->op_size && !b[VD_THROTTLE_OPS_TOTAL].avg && !b[VD_THROTTLE_OPS_READ].avg &&
        !b[VD_THROTTLE_OPS_WRITE].avg) {
        vd_error_setg(errp, EINVAL, "iops size requires an iops value to be set");
        return -EINVAL;
    }
    if (cfg->op_size > VD_THROTTLE_VALUE_MAX) {
        vd_error_setg(errp, EINVAL, "iops-size %llu must be within [0, %llu]",
                      (unsigned long long)cfg->op_size, VD_THROTTLE_VALUE_MAX);
        return -EINVAL;
    }
    for (size_t i = 0; i < VD_ARRAY_SIZE(g_limits); i++) {
        const VdLeakyBucket *k = &b[g_limits[i].bucket];
        const char *n = g_limits[i].name;
        uint64_t v = *limit_field((VdThrottleConfig *)cfg, i);
        switch (g_limits[i].field) {
        case LIM_AVG:
        case LIM_MAX:
            if (v > VD_THROTTLE_VALUE_MAX) {
                vd_error_setg(errp, EINVAL, "%s %llu: bps/iops/max values must be within "
                              "[0, %llu]", n, (unsigned long long)v, VD_THROTTLE_VALUE_MAX);
                return -EINVAL;
            }
            if (g_limits[i].field == LIM_MAX && v && !k->avg) {
                vd_error_setg(errp, EINVAL, "%s: bps_max/iops_max require corresponding "
                              "bps/iops values", n);
                return -EINVAL;
            }
            if (g_limits[i].field == LIM_MAX && v && v < k->avg) {
                vd_error_setg(errp, EINVAL, "%s %llu: bps_max/iops_max cannot be lower than "
                              "bps/iops values (%llu)", n, (unsigned long long)v,
                              (unsigned long long)k->avg);
                return -EINVAL;
            }
            break;
        case LIM_LENGTH:
            if (v == 0) {
                vd_error_setg(errp, EINVAL, "%s: the burst length cannot be 0", n);
                return -EINVAL;
            }
            if (v > 1 && !k->max) {
                vd_error_setg(errp, EINVAL, "%s: burst length set without burst rate", n);
                return -EINVAL;
            }
            if (k->max && v > VD_THROTTLE_VALUE_MAX / k->max) {
                vd_error_setg(errp, EINVAL, "%s %llu: burst length too high for this burst "
                              "rate", n, (unsigned long long)v);
                return -EINVAL;
            }
            break;
        }
    }
    return 0;
}

int vd_throttle_limits_take(VdOpts *opts, bool x_prefix, VdThrottleConfig *cfg,
                            VdError **errp)
{
    char key[64];
    for (size_t i = 0; i <= VD_ARRAY_SIZE(g_limits); i++) {
        const char *name = i < VD_ARRAY_SIZE(g_limits) ? g_limits[i].name : "iops-size";
        uint64_t *field = i < VD_ARRAY_SIZE(g_limits) ? limit_field(cfg, i) : &cfg->op_size;
        snprintf(key, sizeof(key), "%s%s", x_prefix ? "x-" : "", name);
        if (vd_opts_take_uint(opts, key, *field, field, errp) < 0) {
            return -EINVAL;
        }
    }
    return 0;
}

VdJson *vd_throttle_limits_to_json(const VdThrottleConfig *cfg)
{
    VdJson *o = vd_json_object();
    for (size_t i = 0; i < VD_ARRAY_SIZE(g_limits); i++) {
        vd_json_object_put(o, g_limits[i].name,
                           vd_json_uint(*limit_field((VdThrottleConfig *)cfg, i)));
    }
    vd_json_object_put(o, "iops-size", vd_json_uint(cfg->op_size));
    return o;
}

int64_t vd_throttle_limit_get(const VdThrottleConfig *cfg, const char *name)
{
    if (!strcmp(name, "iops-size")) {
        return (int64_t)cfg->op_size;
    }
    for (size_t i = 0; i < VD_ARRAY_SIZE(g_limits); i++) {
        if (!strcmp(name, g_limits[i].name)) {
            return (int64_t)*limit_field((VdThrottleConfig *)cfg, i);
        }
    }
    return -1;
}

void vd_throttle_state_config(VdThrottleState *ts, const VdThrottleConfig *cfg, int64_t now)
{
    ts->cfg = *cfg;
    for (int i = 0; i < VD_THROTTLE_BUCKETS; i++) {
        ts->cfg.buckets[i].level = 0;
        ts->cfg.buckets[i].burst_level = 0;
    }
    ts->previous_leak = now;
}

static void bucket_leak(VdLeakyBucket *b, int64_t delta_ns)
{
    double leak = (double)b->avg * (double)delta_ns / NS_PER_SEC;
    b->level = VD_MAX(b->level - leak, 0.0);
    if (b->burst_length > 1) {
        leak = (double)b->max * (double)delta_ns / NS_PER_SEC;
        b->burst_level = VD_MAX(b->burst_level - leak, 0.0);
    }
}

static int64_t bucket_wait(const VdLeakyBucket *b)
{
    if (!b->avg) {
        return 0;
    }
    double bucket_size, burst_bucket_size;
    if (!b->max) {
        /* no burst given: still let short bursts of a tenth of a second through */
        bucket_size = (double)b->avg / 10;
        burst_bucket_size = 0;
    } else {
        /* with a burst: all of it at the burst rate before falling to avg */
        bucket_size = (double)b->max * (double)b->burst_length;
        burst_bucket_size = (double)b->max / 10;
    }
    double extra = b->level - bucket_size;
    if (extra > 0) {
        return (int64_t)(extra * NS_PER_SEC / (double)b->avg);
    }
    if (b->burst_length > 1) {
        extra = b->burst_level - burst_bucket_size;
        if (extra > 0) {
            return (int64_t)(extra * NS_PER_SEC / (double)b->max);
        }
    }
    return 0;
}

int64_t vd_throttle_compute_wait(VdThrottleState *ts, bool is_write, int64_t now)
{
    static const VdThrottleBucketType check[2][4] = {
        { VD_THROTTLE_BPS_TOTAL, VD_THROTTLE_OPS_TOTAL, VD_THROTTLE_BPS_READ,
          VD_THROTTLE_OPS_READ },
        { VD_THROTTLE_BPS_TOTAL, VD_THROTTLE_OPS_TOTAL, VD_THROTTLE_BPS_WRITE,
          VD_THROTTLE_OPS_WRITE },
    };
    int64_t delta = now - ts->previous_leak;
    if (delta > 0) {
        ts->previous_leak = now;
        for (int i = 0; i < VD_THROTTLE_BUCKETS; i++) {
            bucket_leak(&ts->cfg.buckets[i], delta);
        }
    }
    int64_t wait = 0;
    for (int i = 0; i < 4; i++) {
        wait = VD_MAX(wait, bucket_wait(&ts->cfg.buckets[check[is_write][i]]));
    }
    return wait;
}

void vd_throttle_account(VdThrottleState *ts, bool is_write, uint64_t bytes)
{
    static const VdThrottleBucketType size_buckets[2][2] = {
        { VD_THROTTLE_BPS_TOTAL, VD_THROTTLE_BPS_READ },
        { VD_THROTTLE_BPS_TOTAL, VD_THROTTLE_BPS_WRITE },
    };
    static const VdThrottleBucketType op_buckets[2][2] = {
        { VD_THROTTLE_OPS_TOTAL, VD_THROTTLE_OPS_READ },
        { VD_THROTTLE_OPS_TOTAL, VD_THROTTLE_OPS_WRITE },
    };
    double units = 1.0;
    if (ts->cfg.op_size && bytes > ts->cfg.op_size) {
        units = (double)bytes / (double)ts->cfg.op_size;
    }
    for (int i = 0; i < 2; i++) {
        VdLeakyBucket *b = &ts->cfg.buckets[size_buckets[is_write][i]];
        b->level += (double)bytes;
        if (b->burst_length > 1) {
            b->burst_level += (double)bytes;
        }
        b = &ts->cfg.buckets[op_buckets[is_write][i]];
        b->level += units;
        if (b->burst_length > 1) {
            b->burst_level += units;
        }
    }
}
