/*
 * Throttle groups: one budget (VdThrottleState) shared by member nodes that
 * may run in different IOThreads, served round-robin (QEMU's
 * block/throttle-groups.c algorithm). Per direction the group has one
 * "token" member and at most one armed timer in the whole group; a member's
 * requests wait in its own FIFO, in its own context.
 *
 * Locking: the group state (buckets, tokens, armed flags, members' pending
 * counts) is under the group's small mutex, held only for the arithmetic,
 * never across a yield or a wake-up. A member's timers, BHs and wait queues
 * belong to the member's context; another thread that must arm a member's
 * timer records the deadline and schedules the member's kick BH instead.
 */
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include "filters/throttle.h"

struct VdThrottleWaiter {
    VdCoroutine *co;
    VdThrottleWaiter *next;
};

struct VdThrottleGroup {
    char *id;
    pthread_mutex_t lock;
    VdThrottleState ts;                 /* lock */
    int enabled;                        /* atomic: any limit set */
    VdThrottleMember *members;          /* lock */
    VdThrottleMember *tokens[2];        /* lock: whose turn, per direction */
    bool any_timer_armed[2];            /* lock */
    int n_members;                      /* registry lock */
    VdThrottleGroup *next;              /* registry */
};

static pthread_mutex_t g_registry_lock = PTHREAD_MUTEX_INITIALIZER;
static VdThrottleGroup *g_groups;

/* ---- registry ------------------------------------------------------------- */

static VdThrottleGroup *group_find_locked(const char *id)
{
    for (VdThrottleGroup *g = g_groups; g; g = g->next) {
        if (!strcmp(g->id, id)) {
            return g;
        }
    }
    return NULL;
}

bool vd_throttle_group_exists(const char *id)
{
    pthread_mutex_lock(&g_registry_lock);
    bool found = group_find_locked(id) != NULL;
    pthread_mutex_unlock(&g_registry_lock);
    return found;
}

/* x-* properties first, then the "limits" object on top (both spellings QEMU
 * accepts). Every key of opts is consumed. */
static int group_parse_limits(const char *id, VdOpts *opts, VdThrottleConfig *cfg,
                              VdError **errp)
{
    int ret = -EINVAL;
    VdOpts *limits = NULL;
    VdJson *lv = vd_opts_lookup(opts, "limits");
    if (lv && vd_json_type(lv) != VD_JSON_OBJECT) {
        vd_error_setg(errp, EINVAL, "throttle group '%s': 'limits' must be an object "
                      "(limits.iops-total=...)", id);
        return -EINVAL;
    }
    limits = vd_opts_take_sub(opts, "limits");
    if (vd_throttle_limits_take(opts, true, cfg, errp) < 0 ||
        (limits && vd_throttle_limits_take(limits, false, cfg, errp) < 0)) {
        goto out;
    }
    if ((limits && vd_opts_check_empty(limits, "ThrottleLimits", errp) < 0) ||
        vd_opts_check_empty(opts, "Object 'throttle-group'", errp) < 0) {
        goto out;
    }
    if (vd_throttle_config_check(cfg, errp) < 0) {
        goto out;
    }
    ret = 0;
out:
    if (ret < 0 && errp && *errp) {
        vd_error_prepend(errp, "throttle group '%s': ", id);
    }
    vd_json_unref(limits);
    return ret;
}

int vd_throttle_group_create(const char *id, VdOpts *opts, VdError **errp)
{
    char *own_id = NULL;
    VdThrottleConfig cfg;
    int ret;

    vd_json_object_del(opts, "qom-type");
    if (!id) {
        if (vd_opts_take_str(opts, "id", NULL, &own_id, errp) < 0) {
            return -EINVAL;
        }
        if (!own_id || !own_id[0]) {
            free(own_id);
            vd_error_setg(errp, EINVAL, "throttle-group: Parameter 'id' is missing");
            return -EINVAL;
        }
        id = own_id;
    } else {
        vd_json_object_del(opts, "id");
    }
    vd_throttle_config_init(&cfg);
    ret = group_parse_limits(id, opts, &cfg, errp);
    if (ret < 0) {
        free(own_id);
        return ret;
    }
    pthread_mutex_lock(&g_registry_lock);
    if (group_find_locked(id)) {
        pthread_mutex_unlock(&g_registry_lock);
        vd_error_setg(errp, EEXIST, "attempt to add duplicate property '%s' to object", id);
        free(own_id);
        return -EEXIST;
    }
    VdThrottleGroup *g = calloc(1, sizeof(*g));
    if (!g) {
        pthread_mutex_unlock(&g_registry_lock);
        free(own_id);
        return -ENOMEM;
    }
    g->id = own_id ? own_id : strdup(id);
    pthread_mutex_init(&g->lock, NULL);
    vd_throttle_state_config(&g->ts, &cfg, vd_timer_clock_ns());
    g->enabled = vd_throttle_config_enabled(&cfg);
    g->next = g_groups;
    g_groups = g;
    pthread_mutex_unlock(&g_registry_lock);
    return 0;
}

int vd_throttle_group_delete(const char *id, VdError **errp)
{
    pthread_mutex_lock(&g_registry_lock);
    VdThrottleGroup **pp = &g_groups;
    while (*pp && strcmp((*pp)->id, id)) {
        pp = &(*pp)->next;
    }
    VdThrottleGroup *g = *pp;
    if (!g) {
        pthread_mutex_unlock(&g_registry_lock);
        vd_error_setg(errp, ENOENT, "object '%s' not found", id);
        return -ENOENT;
    }
    if (g->n_members > 0) {
        pthread_mutex_lock(&g->lock);
        vd_error_setg(errp, EBUSY, "object '%s' is in use, can not be deleted "
                      "(throttle node '%s' is a member)", id, g->members->owner);
        pthread_mutex_unlock(&g->lock);
        pthread_mutex_unlock(&g_registry_lock);
        return -EBUSY;
    }
    *pp = g->next;
    pthread_mutex_unlock(&g_registry_lock);
    pthread_mutex_destroy(&g->lock);
    free(g->id);
    free(g);
    return 0;
}

int vd_throttle_group_set_prop(const char *id, const char *prop, const VdJson *value,
                               VdError **errp)
{
    VdOpts *o = vd_json_object();
    VdThrottleConfig cfg;
    int ret = -EINVAL;

    pthread_mutex_lock(&g_registry_lock);
    VdThrottleGroup *g = group_find_locked(id);
    if (!g) {
        vd_error_setg(errp, ENOENT, "Device '%s' not found", id);
        ret = -ENOENT;
        goto out;
    }
    if (!strcmp(prop, "limits")) {
        if (!value || vd_json_type(value) != VD_JSON_OBJECT) {
            vd_error_setg(errp, EINVAL, "throttle group '%s': 'limits' must be an object", id);
            goto out;
        }
        vd_json_object_put(o, "limits", vd_json_deep_copy(value));
    } else if (!strncmp(prop, "x-", 2) && vd_throttle_limit_get(&g->ts.cfg, prop + 2) >= 0) {
        vd_json_object_put(o, prop, value ? vd_json_deep_copy(value) : vd_json_null());
    } else {
        vd_error_setg(errp, ENOENT, "Property '%s.%s' not found", "throttle-group", prop);
        ret = -ENOENT;
        goto out;
    }
    pthread_mutex_lock(&g->lock);
    cfg = g->ts.cfg;
    pthread_mutex_unlock(&g->lock);
    if (group_parse_limits(id, o, &cfg, errp) < 0) {
        goto out;
    }
    pthread_mutex_lock(&g->lock);
    vd_throttle_state_config(&g->ts, &cfg, vd_timer_clock_ns());
    __atomic_store_n(&g->enabled, vd_throttle_config_enabled(&cfg), __ATOMIC_RELAXED);
    pthread_mutex_unlock(&g->lock);
    ret = 0;
out:
    pthread_mutex_unlock(&g_registry_lock);
    vd_json_unref(o);
    return ret;
}

VdJson *vd_throttle_group_get_prop(const char *id, const char *prop, VdError **errp)
{
    VdJson *v = NULL;
    pthread_mutex_lock(&g_registry_lock);
    VdThrottleGroup *g = group_find_locked(id);
    if (!g) {
        vd_error_setg(errp, ENOENT, "Device '%s' not found", id);
        goto out;
    }
    pthread_mutex_lock(&g->lock);
    if (!strcmp(prop, "limits")) {
        v = vd_throttle_limits_to_json(&g->ts.cfg);
    } else if (!strncmp(prop, "x-", 2) && vd_throttle_limit_get(&g->ts.cfg, prop + 2) >= 0) {
        v = vd_json_uint((uint64_t)vd_throttle_limit_get(&g->ts.cfg, prop + 2));
    }
    pthread_mutex_unlock(&g->lock);
    if (!v) {
        vd_error_setg(errp, ENOENT, "Property '%s.%s' not found", "throttle-group", prop);
    }
out:
    pthread_mutex_unlock(&g_registry_lock);
    return v;
}

int vd_throttle_object_add(VdOpts *opts, VdError **errp)
{
    VdJson *t = vd_opts_lookup(opts, "qom-type");
    const char *type = t ? vd_json_get_string(t) : NULL;
    int ret;
    if (!type || strcmp(type, "throttle-group")) {
        vd_error_setg(errp, ENOTSUP, "object: type '%s' is not supported (only "
                      "'throttle-group')", type ? type : "");
        ret = -ENOTSUP;
    } else {
        ret = vd_throttle_group_create(NULL, opts, errp);
    }
    vd_json_unref(opts);
    return ret;
}

/* ---- round-robin scheduling (group lock held) --------------------------------- */

static inline bool member_disabled(VdThrottleMember *m)
{
    return __atomic_load_n(&m->limits_disabled, __ATOMIC_RELAXED) > 0;
}

static VdThrottleMember *member_next(VdThrottleGroup *g, VdThrottleMember *m)
{
    return m->next ? m->next : g->members;
}

/* Whose turn is it: the next member after the current token that has
 * requests waiting, or m itself if nobody has (m is about to queue one). */
static VdThrottleMember *next_token(VdThrottleMember *m, int dir)
{
    VdThrottleGroup *g = m->group;
    if (m->pending[dir] && member_disabled(m)) {
        return m;   /* being drained: do not make it wait for the others */
    }
    VdThrottleMember *start = g->tokens[dir] ? g->tokens[dir] : m;
    VdThrottleMember *token = member_next(g, start);
    while (token != start && !token->pending[dir]) {
        token = member_next(g, token);
    }
    if (token == start && !token->pending[dir]) {
        token = m;
    }
    return token;
}

/* Fire m's timer of dir at when (m's thread: directly; else through its
 * kick BH). m then holds the group's one armed timer of that direction. */
static void member_arm(VdThrottleMember *m, int dir, int64_t when)
{
    VdThrottleGroup *g = m->group;
    if (!m->ctx) {
        return;     /* detached: drained, nothing of it waits */
    }
    m->armed[dir] = true;
    g->any_timer_armed[dir] = true;
    /* recorded in both cases: a kick still pending from another thread
     * must not re-arm the timer with an older deadline */
    m->arm_at[dir] = when;
    if (vd_aio_in_home_thread(m->ctx)) {
        vd_timer_mod(m->timer[dir], when);
    } else {
        vd_bh_schedule(m->kick[dir]);
    }
}

/* Does token have to wait? If so arm its timer for the moment the buckets
 * allow a request (unless a timer of the group is armed already). */
static bool schedule_timer(VdThrottleMember *token, int dir, int64_t now)
{
    VdThrottleGroup *g = token->group;
    if (member_disabled(token)) {
        return false;
    }
    if (g->any_timer_armed[dir]) {
        return true;
    }
    int64_t wait = vd_throttle_compute_wait(&g->ts, dir, now);
    if (!wait) {
        return false;
    }
    g->tokens[dir] = token;
    member_arm(token, dir, now + wait);
    return true;
}

/* After a request of m went: pass the turn to the next member with requests
 * waiting. Returns true if the caller (a coroutine of m, after unlocking)
 * must wake m's next waiter itself. */
static bool schedule_next(VdThrottleMember *m, int dir, bool in_coroutine, int64_t now)
{
    VdThrottleGroup *g = m->group;
    VdThrottleMember *token = next_token(m, dir);
    if (!token->pending[dir]) {
        return false;
    }
    if (schedule_timer(token, dir, now)) {
        return false;
    }
    /* it may go now: prefer m's own queue (no thread switch) */
    if (in_coroutine && m->head[dir]) {
        g->tokens[dir] = m;
        return true;
    }
    g->tokens[dir] = token;
    member_arm(token, dir, now);
    return false;
}

/* ---- member's thread ------------------------------------------------------------ */

/* Wake m's first waiter of dir; false if none. Never inside the caller. */
static bool member_wake_next(VdThrottleMember *m, int dir)
{
    VdThrottleWaiter *w = m->head[dir];
    if (!w) {
        return false;
    }
    m->head[dir] = w->next;
    if (!m->head[dir]) {
        m->tail[dir] = NULL;
    }
    vd_aio_co_schedule(m->ctx, w->co);
    return true;
}

static void member_timer_fired(VdThrottleMember *m, int dir)
{
    VdThrottleGroup *g = m->group;
    pthread_mutex_lock(&g->lock);
    m->armed[dir] = false;
    g->any_timer_armed[dir] = false;
    pthread_mutex_unlock(&g->lock);
    if (member_wake_next(m, dir)) {
        return;     /* it charges itself and passes the turn on */
    }
    pthread_mutex_lock(&g->lock);
    schedule_next(m, dir, false, vd_timer_clock_ns());
    pthread_mutex_unlock(&g->lock);
}

static void member_read_timer(void *opaque) { member_timer_fired(opaque, 0); }
static void member_write_timer(void *opaque) { member_timer_fired(opaque, 1); }

static void member_kick(VdThrottleMember *m, int dir)
{
    VdThrottleGroup *g = m->group;
    pthread_mutex_lock(&g->lock);
    bool armed = m->armed[dir];
    int64_t when = m->arm_at[dir];
    pthread_mutex_unlock(&g->lock);
    if (armed) {
        vd_timer_mod(m->timer[dir], when);
    }
}

static void member_read_kick(void *opaque) { member_kick(opaque, 0); }
static void member_write_kick(void *opaque) { member_kick(opaque, 1); }

static void member_make_handlers(VdThrottleMember *m, VdAioContext *ctx)
{
    m->timer[0] = vd_timer_new(ctx, member_read_timer, m);
    m->timer[1] = vd_timer_new(ctx, member_write_timer, m);
    m->kick[0] = vd_bh_new(ctx, member_read_kick, m);
    m->kick[1] = vd_bh_new(ctx, member_write_kick, m);
}

/* Give up the group's armed timers m holds (it leaves or moves): another
 * member with requests waiting gets the turn. Group lock held. */
static void member_drop_timers(VdThrottleMember *m)
{
    for (int dir = 0; dir < 2; dir++) {
        if (m->armed[dir]) {
            m->armed[dir] = false;
            m->group->any_timer_armed[dir] = false;
            schedule_next(m, dir, false, vd_timer_clock_ns());
        }
    }
}

static void member_free_handlers(VdThrottleMember *m)
{
    for (int dir = 0; dir < 2; dir++) {
        vd_timer_free(m->timer[dir]);
        m->timer[dir] = NULL;
        if (m->kick[dir]) {
            vd_bh_delete(m->kick[dir]);
            m->kick[dir] = NULL;
        }
    }
}

int vd_throttle_member_register(VdThrottleMember *m, const char *group, const char *owner,
                                VdAioContext *ctx, VdError **errp)
{
    pthread_mutex_lock(&g_registry_lock);
    VdThrottleGroup *g = group_find_locked(group);
    if (!g) {
        pthread_mutex_unlock(&g_registry_lock);
        vd_error_setg(errp, ENOENT, "Throttle group '%s' not found (create it with --object "
                      "throttle-group,id=%s)", group, group);
        return -ENOENT;
    }
    g->n_members++;
    memset(m, 0, sizeof(*m));
    m->group = g;
    snprintf(m->owner, sizeof(m->owner), "%s", owner);
    member_make_handlers(m, ctx);
    pthread_mutex_lock(&g->lock);
    m->ctx = ctx;
    VdThrottleMember **pp = &g->members;
    while (*pp) {
        pp = &(*pp)->next;
    }
    *pp = m;
    for (int dir = 0; dir < 2; dir++) {
        if (!g->tokens[dir]) {
            g->tokens[dir] = m;
        }
    }
    pthread_mutex_unlock(&g->lock);
    pthread_mutex_unlock(&g_registry_lock);
    return 0;
}

void vd_throttle_member_unregister(VdThrottleMember *m)
{
    VdThrottleGroup *g = m->group;
    if (!g) {
        return;
    }
    assert(!m->head[0] && !m->head[1]);
    pthread_mutex_lock(&g_registry_lock);
    pthread_mutex_lock(&g->lock);
    member_drop_timers(m);
    for (VdThrottleMember **pp = &g->members; *pp; pp = &(*pp)->next) {
        if (*pp == m) {
            *pp = m->next;
            break;
        }
    }
    for (int dir = 0; dir < 2; dir++) {
        if (g->tokens[dir] == m) {
            g->tokens[dir] = m->next ? m->next : g->members;
        }
    }
    m->ctx = NULL;
    pthread_mutex_unlock(&g->lock);
    g->n_members--;
    pthread_mutex_unlock(&g_registry_lock);
    member_free_handlers(m);
    m->group = NULL;
}

void coroutine_fn vd_throttle_member_intercept(VdThrottleMember *m, int64_t bytes,
                                               bool is_write)
{
    VD_CO_ASSERT();
    VdThrottleGroup *g = m->group;
    int dir = is_write;

    /* No limit and nobody of ours queued (pending is written in this thread
     * only): nothing to count, no lock. A limit set later starts from empty
     * buckets anyway (vd_throttle_state_config). */
    if (!__atomic_load_n(&g->enabled, __ATOMIC_RELAXED) && !m->pending[dir]) {
        return;
    }
    int64_t now = vd_timer_clock_ns();
    pthread_mutex_lock(&g->lock);
    if (!member_disabled(m)) {
        VdThrottleMember *token = next_token(m, dir);
        bool must_wait = schedule_timer(token, dir, now);
        if (must_wait || m->pending[dir]) {
            VdThrottleWaiter w = { .co = vd_co_self() };
            m->pending[dir]++;
            pthread_mutex_unlock(&g->lock);
            if (m->tail[dir]) {
                m->tail[dir]->next = &w;
            } else {
                m->head[dir] = &w;
            }
            m->tail[dir] = &w;
            vd_co_yield();
            now = vd_timer_clock_ns();
            pthread_mutex_lock(&g->lock);
            m->pending[dir]--;
        }
    }
    vd_throttle_account(&g->ts, dir, (uint64_t)bytes);
    bool wake_own = schedule_next(m, dir, true, now);
    pthread_mutex_unlock(&g->lock);
    if (wake_own) {
        member_wake_next(m, dir);
    }
}

/* Let the queued requests go, one after the other: the first is woken here,
 * each one wakes the next as it leaves (schedule_next prefers the member's
 * own queue), so no timer is armed for them. A timer m held is cancelled: it
 * was for a request that now goes anyway, and left armed it would later let
 * an unrelated request through without its wait. */
void vd_throttle_member_drain_begin(VdThrottleMember *m)
{
    VdThrottleGroup *g = m->group;
    __atomic_add_fetch(&m->limits_disabled, 1, __ATOMIC_RELAXED);
    for (int dir = 0; dir < 2; dir++) {
        pthread_mutex_lock(&g->lock);
        bool has_waiter = m->head[dir] != NULL;
        if (m->armed[dir]) {
            m->armed[dir] = false;
            g->any_timer_armed[dir] = false;
            vd_timer_del(m->timer[dir]);
            if (!has_waiter) {
                schedule_next(m, dir, false, vd_timer_clock_ns());   /* the others' turn */
            }
        }
        pthread_mutex_unlock(&g->lock);
        if (has_waiter) {
            member_wake_next(m, dir);
        }
    }
}

void vd_throttle_member_drain_end(VdThrottleMember *m)
{
    int v = __atomic_sub_fetch(&m->limits_disabled, 1, __ATOMIC_RELAXED);
    assert(v >= 0);
    (void)v;
}

void vd_throttle_member_detach(VdThrottleMember *m)
{
    VdThrottleGroup *g = m->group;
    pthread_mutex_lock(&g->lock);
    member_drop_timers(m);
    m->ctx = NULL;
    pthread_mutex_unlock(&g->lock);
    member_free_handlers(m);
}

void vd_throttle_member_attach(VdThrottleMember *m, VdAioContext *ctx)
{
    VdThrottleGroup *g = m->group;
    member_make_handlers(m, ctx);
    pthread_mutex_lock(&g->lock);
    m->ctx = ctx;
    pthread_mutex_unlock(&g->lock);
}
