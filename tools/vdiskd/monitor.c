/*
 * The JSON monitor (QMP style) on UNIX sockets: --chardev socket,... plus
 * --monitor chardev=ID. Greeting, qmp_capabilities, then {"execute": ...,
 * "arguments": ..., "id": ...} -> {"return": ...} or {"error": ...}.
 * Runs in the main context. While a command runs (it may poll the main loop,
 * e.g. to drain exports) no monitor input is read, so commands never nest.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "export/export.h"
#include "daemon.h"

#define MON_MAX_VALUE (1024 * 1024)
#define MON_MAX_OUTPUT (16 * 1024 * 1024)

typedef struct VddChardev {
    char *id;
    char *path;
    bool used;
    struct VddChardev *next;
} VddChardev;

typedef struct VddMonitor {
    int fd;
    VdTimer *retry;           /* re-arms accept after EMFILE and the like */
    char *path;
    bool pretty;
    struct VddMonitor *next;
} VddMonitor;

typedef struct MonClient {
    int fd;
    VddMonitor *mon;
    VdJsonStream *js;
    bool negotiated;
    bool dead;
    char *out;
    size_t out_len, out_cap;
    VdJson **queue;
    size_t nqueue, qcap;
    VdJson *pending_event;    /* BLOCK_EXPORT_DELETED to send after the reply */
    struct MonClient *next;
} MonClient;

static VddChardev *g_chardevs;
static VddMonitor *g_monitors;
static MonClient *g_clients;
static bool g_mon_busy;
static bool g_mon_started;    /* accept only once the command line is processed */

static void mon_client_read(void *opaque);
static void mon_client_write(void *opaque);
static void mon_accept(void *opaque);

static void mon_client_update(MonClient *c)
{
    vd_aio_set_fd_handler(vd_aio_main_context(), c->fd,
                          (g_mon_busy || c->dead) ? NULL : mon_client_read,
                          (c->out_len && !c->dead) ? mon_client_write : NULL, NULL, NULL, c);
}

/* Accepting goes on while a command runs (a new client gets its greeting;
 * its input is read once the command is done), so the monitor never looks
 * dead; it starts only when the command line is processed. */
static void mon_listen_update(VddMonitor *m)
{
    vd_aio_set_fd_handler(vd_aio_main_context(), m->fd, g_mon_started ? mon_accept : NULL, NULL,
                          NULL, NULL, m);
}

static void mon_retry_accept(void *opaque)
{
    mon_listen_update(opaque);
}

static void mon_set_busy(bool busy)
{
    g_mon_busy = busy;
    for (MonClient *c = g_clients; c; c = c->next) {
        mon_client_update(c);
    }
}

static void mon_client_free(MonClient *c)
{
    for (MonClient **pp = &g_clients; *pp; pp = &(*pp)->next) {
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    }
    vd_aio_set_fd_handler(vd_aio_main_context(), c->fd, NULL, NULL, NULL, NULL, NULL);
    close(c->fd);
    vd_json_stream_free(c->js);
    for (size_t i = 0; i < c->nqueue; i++) {
        vd_json_unref(c->queue[i]);
    }
    free(c->queue);
    vd_json_unref(c->pending_event);
    free(c->out);
    free(c);
}

/* Free the clients whose socket failed (a send error, EOF, or replies not
 * read). Never while a command runs: its client is still in use. */
static void mon_reap_dead(void)
{
    if (g_mon_busy) {
        return;
    }
    for (MonClient **pp = &g_clients; *pp;) {
        MonClient *c = *pp;
        if (c->dead) {
            mon_client_free(c);     /* unlinks c: *pp is now its successor */
        } else {
            pp = &c->next;
        }
    }
}

static void mon_flush(MonClient *c)
{
    while (c->out_len && !c->dead) {
        ssize_t n = send(c->fd, c->out, c->out_len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
                c->dead = true;
            }
            break;
        }
        memmove(c->out, c->out + n, c->out_len - n);
        c->out_len -= n;
    }
    mon_client_update(c);
}

static void mon_send(MonClient *c, VdJson *v)
{
    char *s = vd_json_to_string(v, c->mon->pretty);
    size_t len = strlen(s);
    vd_json_unref(v);
    if (c->out_len + len + 2 > MON_MAX_OUTPUT) {
        c->dead = true;   /* client does not read its replies */
        free(s);
        return;
    }
    if (c->out_len + len + 2 > c->out_cap) {
        c->out_cap = (c->out_len + len + 2) * 2;
        c->out = realloc(c->out, c->out_cap);
    }
    memcpy(c->out + c->out_len, s, len);
    c->out_len += len;
    c->out[c->out_len++] = '\r';
    c->out[c->out_len++] = '\n';
    free(s);
    mon_flush(c);
}

static VdJson *mon_error(const char *cls, const char *desc)
{
    VdJson *o = vd_json_object();
    VdJson *e = vd_json_object();
    vd_json_object_put_str(e, "class", cls);
    vd_json_object_put_str(e, "desc", desc);
    vd_json_object_put(o, "error", e);
    return o;
}

/*
 * A string argument: 0 with *out set (NULL if absent and optional), or -1
 * with err set when it is missing or not a string (QMP's wording).
 */
static int mon_str_arg(VdJson *args, const char *key, bool required, const char **out,
                       VdError **err)
{
    VdJson *v = args ? vd_json_object_get(args, key) : NULL;

    *out = NULL;
    if (!v) {
        if (required) {
            vd_error_setg(err, EINVAL, "Parameter '%s' is missing", key);
            return -1;
        }
        return 0;
    }
    if (vd_json_type(v) != VD_JSON_STRING) {
        vd_error_setg(err, EINVAL, "Invalid parameter type for '%s', expected: string", key);
        return -1;
    }
    *out = vd_json_get_string(v);
    return 0;
}

static VdJson *mon_copy_args(VdJson *args)
{
    return args ? vd_json_deep_copy(args) : vd_json_object();
}

static const char *const g_commands[] = {
    "qmp_capabilities", "query-version", "query-commands", "query-iothreads",
    "query-named-block-nodes", "query-block-exports", "blockdev-add", "blockdev-del",
    "block-export-add", "block-export-del", "nbd-server-start", "nbd-server-stop",
    "x-blockdev-set-iothread", "object-add", "object-del", "cont", "quit",
    "qom-set", "qom-get", NULL,
};

/* Run one command; returns the "return" value or NULL with *err set. */
static VdJson *mon_dispatch(MonClient *c, const char *cmd, VdJson *args, VdError **err)
{
    int ret = 0;

    if (strcmp(cmd, "query-version") == 0) {
        VdJson *o = vd_json_object(), *q = vd_json_object();
        int maj = 0, min = 0, mic = 0;
        sscanf(VDISK_VERSION, "%d.%d.%d", &maj, &min, &mic);
        vd_json_object_put_int(q, "major", maj);
        vd_json_object_put_int(q, "minor", min);
        vd_json_object_put_int(q, "micro", mic);
        vd_json_object_put(o, "qemu", q);
        vd_json_object_put_str(o, "package", "vdisk " VDISK_VERSION);
        return o;
    } else if (strcmp(cmd, "query-commands") == 0) {
        VdJson *a = vd_json_array();
        for (int i = 0; g_commands[i]; i++) {
            VdJson *o = vd_json_object();
            vd_json_object_put_str(o, "name", g_commands[i]);
            vd_json_array_append(a, o);
        }
        return a;
    } else if (strcmp(cmd, "query-iothreads") == 0) {
        return vdd_query_iothreads();
    } else if (strcmp(cmd, "query-named-block-nodes") == 0) {
        return vdd_query_named_block_nodes();
    } else if (strcmp(cmd, "query-block-exports") == 0) {
        return vdd_query_block_exports();
    } else if (strcmp(cmd, "blockdev-add") == 0) {
        ret = vdd_blockdev_add(mon_copy_args(args), err);
    } else if (strcmp(cmd, "blockdev-del") == 0) {
        const char *n;
        if (mon_str_arg(args, "node-name", true, &n, err) < 0) {
            return NULL;
        }
        ret = vdd_blockdev_del(n, err);
    } else if (strcmp(cmd, "block-export-add") == 0) {
        ret = vdd_export_add(mon_copy_args(args), err);
    } else if (strcmp(cmd, "block-export-del") == 0) {
        const char *id, *mode;
        if (mon_str_arg(args, "id", true, &id, err) < 0 ||
            mon_str_arg(args, "mode", false, &mode, err) < 0) {
            return NULL;
        }
        bool hard = mode && strcmp(mode, "hard") == 0;
        if (mode && !hard && strcmp(mode, "safe") != 0) {
            vd_error_setg(err, EINVAL, "Parameter 'mode' does not accept value '%s'", mode);
            return NULL;
        }
        ret = vdd_export_del(id, hard, err);
        if (ret == 0) {
            VdJson *d = vd_json_object();
            vd_json_object_put_str(d, "id", id);
            /* after the reply, as QEMU does */
            c->pending_event = d;
        }
    } else if (strcmp(cmd, "nbd-server-start") == 0) {
        ret = vdd_nbd_server_start(mon_copy_args(args), err);
    } else if (strcmp(cmd, "nbd-server-stop") == 0) {
        ret = vdd_nbd_server_stop(err);
    } else if (strcmp(cmd, "x-blockdev-set-iothread") == 0) {
        const char *n;
        VdJson *t = args ? vd_json_object_get(args, "iothread") : NULL;
        if (mon_str_arg(args, "node-name", true, &n, err) < 0) {
            return NULL;
        }
        if (!t || (vd_json_type(t) != VD_JSON_STRING && vd_json_type(t) != VD_JSON_NULL)) {
            vd_error_setg(err, EINVAL, "Parameter 'iothread' (a string or null) is %s",
                          t ? "of the wrong type" : "missing");
            return NULL;
        }
        ret = vdd_set_iothread(n, vd_json_type(t) == VD_JSON_NULL ? NULL : vd_json_get_string(t),
                               err);
    } else if (strcmp(cmd, "object-add") == 0) {
        ret = vdd_object_add(mon_copy_args(args), err);
    } else if (strcmp(cmd, "object-del") == 0) {
        const char *id;
        if (mon_str_arg(args, "id", true, &id, err) < 0) {
            return NULL;
        }
        ret = vdd_object_del(id, err);
    } else if (vdd_qom_is_command(cmd)) {
        return vdd_qom_command(cmd, args, err);
    } else if (strcmp(cmd, "cont") == 0) {
        vdd_cont();
    } else if (strcmp(cmd, "quit") == 0) {
        g_vdd_quit_reason = "host-qmp-quit";
        g_vdd_quit = true;
    } else {
        vd_error_setg(err, ENOENT, "The command %s has not been found", cmd);
        return NULL;
    }
    if (ret < 0) {
        if (err && !*err) {
            vd_error_setg(err, -ret, "%s failed: %s", cmd, strerror(-ret));
        }
        return NULL;
    }
    return vd_json_object();
}

static void mon_handle(MonClient *c, VdJson *req)
{
    VdJson *id = NULL;
    VdJson *resp = NULL;

    if (vd_json_type(req) != VD_JSON_OBJECT) {
        resp = mon_error("GenericError", "QMP input must be a JSON object");
        goto send;
    }
    id = vd_json_object_get(req, "id");
    VdJson *ex = vd_json_object_get(req, "execute");
    VdJson *args = vd_json_object_get(req, "arguments");
    if (!ex || vd_json_type(ex) != VD_JSON_STRING) {
        resp = mon_error("GenericError", "QMP input lacks member 'execute'");
        goto send;
    }
    if (args && vd_json_type(args) != VD_JSON_OBJECT) {
        resp = mon_error("GenericError", "QMP input member 'arguments' must be an object");
        goto send;
    }
    const char *cmd = vd_json_get_string(ex);
    if (strcmp(cmd, "qmp_capabilities") == 0) {
        if (c->negotiated) {
            resp = mon_error("CommandNotFound",
                             "Capabilities negotiation is already complete, command ignored");
        } else {
            c->negotiated = true;
            resp = vd_json_object();
            vd_json_object_put(resp, "return", vd_json_object());
        }
        goto send;
    }
    if (!c->negotiated) {
        resp = mon_error("CommandNotFound",
                         "Expecting capabilities negotiation with 'qmp_capabilities'");
        goto send;
    }
    VdError *err = NULL;
    VdJson *ret = mon_dispatch(c, cmd, args, &err);
    if (ret) {
        resp = vd_json_object();
        vd_json_object_put(resp, "return", ret);
    } else {
        bool notfound = err && err->code == ENOENT && strstr(err->msg, "has not been found");
        resp = mon_error(notfound ? "CommandNotFound" : "GenericError",
                         err ? err->msg : "unknown error");
        vd_error_free(err);
    }
send:
    if (id) {
        vd_json_object_put(resp, "id", vd_json_deep_copy(id));
    }
    mon_send(c, resp);
    if (c->pending_event) {
        VdJson *d = c->pending_event;
        c->pending_event = NULL;
        vdd_monitor_event("BLOCK_EXPORT_DELETED", d);
    }
}

static void mon_stream_cb(void *opaque, VdJson *value, VdError *err)
{
    MonClient *c = opaque;

    if (err) {
        char desc[512];
        snprintf(desc, sizeof(desc), "JSON parse error, %s", err->msg);
        mon_send(c, mon_error("GenericError", desc));
        vd_error_free(err);
        vd_json_unref(value);
        return;
    }
    if (!value) {
        return;
    }
    if (c->nqueue == c->qcap) {
        c->qcap = c->qcap ? c->qcap * 2 : 8;
        c->queue = realloc(c->queue, c->qcap * sizeof(*c->queue));
    }
    c->queue[c->nqueue++] = value;
}

static void mon_client_read(void *opaque)
{
    MonClient *c = opaque;
    char buf[4096];
    ssize_t n = recv(c->fd, buf, sizeof(buf), MSG_DONTWAIT);

    if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
        return;
    }
    if (n <= 0) {
        mon_client_free(c);
        return;
    }
    vd_json_stream_feed(c->js, buf, n);
    if (!c->nqueue) {
        mon_reap_dead();    /* an error reply may have found the client gone */
        return;
    }
    mon_set_busy(true);
    for (size_t i = 0; i < c->nqueue; i++) {
        mon_handle(c, c->queue[i]);
        vd_json_unref(c->queue[i]);
    }
    c->nqueue = 0;
    mon_set_busy(false);
    mon_reap_dead();
}

static void mon_client_write(void *opaque)
{
    MonClient *c = opaque;
    mon_flush(c);
    mon_reap_dead();
}

static void mon_accept(void *opaque)
{
    VddMonitor *m = opaque;
    int fd = accept4(m->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
            /* Out of descriptors: the listener stays readable, so pause
             * accepting for a moment instead of spinning (as the NBD
             * listener does). */
            vd_aio_set_fd_handler(vd_aio_main_context(), m->fd, NULL, NULL, NULL, NULL, NULL);
            vd_timer_mod(m->retry, vd_clock_ns() + 100 * 1000 * 1000);
        }
        return;
    }
    MonClient *c = calloc(1, sizeof(*c));
    c->fd = fd;
    c->mon = m;
    c->js = vd_json_stream_new(mon_stream_cb, c, MON_MAX_VALUE);
    c->next = g_clients;
    g_clients = c;

    int maj = 0, min = 0, mic = 0;
    sscanf(VDISK_VERSION, "%d.%d.%d", &maj, &min, &mic);
    VdJson *g = vd_json_object(), *q = vd_json_object(), *v = vd_json_object(),
           *qv = vd_json_object();
    vd_json_object_put_int(qv, "major", maj);
    vd_json_object_put_int(qv, "minor", min);
    vd_json_object_put_int(qv, "micro", mic);
    vd_json_object_put(v, "qemu", qv);
    vd_json_object_put_str(v, "package", "vdisk " VDISK_VERSION);
    vd_json_object_put(q, "version", v);
    vd_json_object_put(q, "capabilities", vd_json_array());
    vd_json_object_put(g, "QMP", q);
    mon_send(c, g);
    mon_client_update(c);
    mon_reap_dead();    /* a client gone before its greeting */
}

void vdd_monitor_event(const char *name, VdJson *data)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    for (MonClient *c = g_clients; c; c = c->next) {
        if (!c->negotiated || c->dead) {
            continue;
        }
        VdJson *ev = vd_json_object(), *t = vd_json_object();
        vd_json_object_put_int(t, "seconds", ts.tv_sec);
        vd_json_object_put_int(t, "microseconds", ts.tv_nsec / 1000);
        vd_json_object_put(ev, "timestamp", t);
        vd_json_object_put_str(ev, "event", name);
        vd_json_object_put(ev, "data", data ? vd_json_ref(data) : vd_json_object());
        mon_send(c, ev);
    }
    vd_json_unref(data);
    mon_reap_dead();
}

int vdd_chardev_add(VdOpts *opts, VdError **errp)
{
    char *backend = NULL, *id = NULL, *path = NULL;
    bool server = false, wait = true;
    int ret = -EINVAL;

    if (vd_opts_take_str(opts, "backend", NULL, &backend, errp) < 0 ||
        vd_opts_take_str(opts, "id", NULL, &id, errp) < 0 ||
        vd_opts_take_str(opts, "path", NULL, &path, errp) < 0 ||
        vd_opts_take_bool(opts, "server", false, &server, errp) < 0 ||
        vd_opts_take_bool(opts, "wait", true, &wait, errp) < 0 ||
        vd_opts_check_empty(opts, "chardev", errp) < 0) {
        goto out;
    }
    if (!backend || strcmp(backend, "socket") != 0) {
        vd_error_setg(errp, EINVAL, "chardev: backend '%s' is not supported (only socket)",
                      backend ? backend : "");
        goto out;
    }
    if (!id || !path) {
        vd_error_setg(errp, EINVAL, "chardev: parameters 'id' and 'path' are required");
        goto out;
    }
    if (!server) {
        vd_error_setg(errp, EINVAL, "chardev '%s': only server=on sockets are supported", id);
        goto out;
    }
    if (wait) {
        vd_error_setg(errp, EINVAL, "chardev '%s': wait=on is not supported, use wait=off", id);
        goto out;
    }
    for (VddChardev *d = g_chardevs; d; d = d->next) {
        if (strcmp(d->id, id) == 0) {
            vd_error_setg(errp, EEXIST, "chardev: duplicate id '%s'", id);
            goto out;
        }
    }
    VddChardev *d = calloc(1, sizeof(*d));
    d->id = id;
    d->path = path;
    id = path = NULL;
    d->next = g_chardevs;
    g_chardevs = d;
    ret = 0;
out:
    free(backend);
    free(id);
    free(path);
    vd_json_unref(opts);
    return ret;
}

int vdd_monitor_add(VdOpts *opts, VdError **errp)
{
    char *chardev = NULL, *mode = NULL;
    bool pretty = false;
    int ret = -EINVAL;
    VddChardev *d = NULL;

    if (vd_opts_take_str(opts, "chardev", NULL, &chardev, errp) < 0 ||
        vd_opts_take_str(opts, "mode", "control", &mode, errp) < 0 ||
        vd_opts_take_bool(opts, "pretty", false, &pretty, errp) < 0 ||
        vd_opts_check_empty(opts, "monitor", errp) < 0) {
        goto out;
    }
    if (!chardev) {
        vd_error_setg(errp, EINVAL, "monitor: parameter 'chardev' is missing");
        goto out;
    }
    if (strcmp(mode, "control") != 0) {
        vd_error_setg(errp, EINVAL, "monitor: mode '%s' is not supported (control)", mode);
        goto out;
    }
    for (d = g_chardevs; d; d = d->next) {
        if (strcmp(d->id, chardev) == 0) {
            break;
        }
    }
    if (!d) {
        vd_error_setg(errp, ENOENT, "monitor: chardev \"%s\" not found", chardev);
        goto out;
    }
    if (d->used) {
        vd_error_setg(errp, EBUSY, "monitor: chardev '%s' is already in use", chardev);
        goto out;
    }
    int fd = vd_unix_socket_listen(d->path, 16, errp);
    if (fd < 0) {
        vd_error_prepend(errp, "chardev '%s': ", d->id);
        goto out;
    }
    d->used = true;
    VddMonitor *m = calloc(1, sizeof(*m));
    m->fd = fd;
    m->retry = vd_timer_new(vd_aio_main_context(), mon_retry_accept, m);
    m->path = strdup(d->path);
    m->pretty = pretty;
    m->next = g_monitors;
    g_monitors = m;
    mon_listen_update(m);
    ret = 0;
out:
    free(chardev);
    free(mode);
    vd_json_unref(opts);
    return ret;
}

void vdd_monitor_start(void)
{
    g_mon_started = true;
    for (VddMonitor *m = g_monitors; m; m = m->next) {
        mon_listen_update(m);
    }
}

void vdd_monitor_close_all(void)
{
    while (g_clients) {
        MonClient *c = g_clients;
        mon_flush(c);
        mon_client_free(c);
    }
    while (g_monitors) {
        VddMonitor *m = g_monitors;
        g_monitors = m->next;
        vd_aio_set_fd_handler(vd_aio_main_context(), m->fd, NULL, NULL, NULL, NULL, NULL);
        vd_timer_free(m->retry);
        close(m->fd);
        unlink(m->path);
        free(m->path);
        free(m);
    }
    while (g_chardevs) {
        VddChardev *d = g_chardevs;
        g_chardevs = d->next;
        free(d->id);
        free(d->path);
        free(d);
    }
}
