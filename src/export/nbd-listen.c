/*
 * NBD listening sockets (UNIX and TCP) in the main context: accepting with
 * back-off at EMFILE, only once the daemon is set up, and the server's
 * limits and counters.
 */
#include "export/nbd-int.h"

NbdServer g_nbd_server = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .accepting = true,
    .handshake_timeout_ns = 10LL * 1000 * 1000 * 1000,
};

/* ---------------------------------------------------------------------------
 * Listeners (main context)
 */

static void nbd_listener_accept(void *opaque, int fd)
{
    (void)opaque;
    if (g_nbd_server.max_conns > 0 && vd_nbd_server_n_clients() >= g_nbd_server.max_conns) {
        VD_TRACE(VD_LOG_NBD, "nbd: connection limit %d reached", g_nbd_server.max_conns);
        close(fd);
        return;
    }
    vd_nbd_server_add_client(fd);
}

void vd_nbd_server_set_accepting(bool on)
{
    g_nbd_server.accepting = on;
    for (NbdListener *l = g_nbd_server.listeners; l; l = l->next) {
        if (on) {
            vd_listener_resume(l->listener);
        } else {
            vd_listener_pause(l->listener);
        }
    }
}

static void nbd_listener_add(int fd, const char *unix_path)
{
    NbdListener *l = calloc(1, sizeof(*l));
    if (!l) {
        abort();
    }
    l->listener = vd_listener_new(fd, unix_path, !g_nbd_server.accepting, nbd_listener_accept,
                                  NULL);
    l->next = g_nbd_server.listeners;
    g_nbd_server.listeners = l;
}

int vd_nbd_server_listen_unix(const char *path, VdError **errp)
{
    /* Binding again would replace the live socket and leave its listener
     * unreachable: refuse, as qemu-storage-daemon refuses a second start. */
    struct stat st_new;
    bool exists = stat(path, &st_new) == 0;
    for (NbdListener *l = g_nbd_server.listeners; l; l = l->next) {
        const char *old = vd_listener_unix_path(l->listener);
        struct stat st_old;
        if (old && (strcmp(old, path) == 0 ||
                             (exists && stat(old, &st_old) == 0 &&
                              st_old.st_dev == st_new.st_dev && st_old.st_ino == st_new.st_ino))) {
            vd_error_setg(errp, EEXIST, "NBD server already running on '%s'", path);
            return -EEXIST;
        }
    }
    int fd = vd_unix_socket_listen(path, 128, errp);
    if (fd < 0) {
        return fd;
    }
    nbd_listener_add(fd, path);
    return 0;
}

int vd_nbd_server_listen_inet(const char *host, const char *port, VdError **errp)
{
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                              .ai_flags = AI_PASSIVE };
    struct addrinfo *res = NULL;
    int ret = getaddrinfo(host && host[0] ? host : NULL, port, &hints, &res);
    if (ret != 0) {
        vd_error_setg(errp, EINVAL, "address resolution failed for %s:%s: %s",
                      host ? host : "", port, gai_strerror(ret));
        return -EINVAL;
    }
    int err = EADDRNOTAVAIL;
    int bound = 0;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                        ai->ai_protocol);
        if (fd < 0) {
            err = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (ai->ai_family == AF_INET6) {
            setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
        }
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 128) < 0) {
            err = errno;
            close(fd);
            continue;
        }
        nbd_listener_add(fd, NULL);
        bound++;
    }
    freeaddrinfo(res);
    if (!bound) {
        vd_error_setg_errno(errp, err, "Failed to bind socket to %s:%s", host ? host : "", port);
        return -err;
    }
    return 0;
}

void vd_nbd_server_close_listeners(void)
{
    while (g_nbd_server.listeners) {
        NbdListener *l = g_nbd_server.listeners;
        g_nbd_server.listeners = l->next;
        vd_listener_free(l->listener);
        free(l);
    }
}

void vd_nbd_server_stop(void)
{
    vd_nbd_server_close_listeners();
    nbd_server_lock();
    for (NbdConn *c = g_nbd_server.conns; c; c = c->next) {
        if (!c->exp) {
            shutdown(c->fd, SHUT_RDWR);   /* in handshake: main context */
        } else {
            nbd_conn_schedule(c, nbd_conn_abort_bh);
        }
    }
    nbd_server_unlock();
    nbd_wait_conns_gone(NULL, NULL);
}


void nbd_server_lock(void) { pthread_mutex_lock(&g_nbd_server.lock); }
void nbd_server_unlock(void) { pthread_mutex_unlock(&g_nbd_server.lock); }

void vd_nbd_server_set_max_connections(int max) { g_nbd_server.max_conns = max; }
void vd_nbd_server_set_handshake_timeout(int64_t ns) { g_nbd_server.handshake_timeout_ns = ns; }
bool vd_nbd_server_running(void) { return g_nbd_server.listeners != NULL; }

int vd_nbd_server_n_clients(void)
{
    return __atomic_load_n(&g_nbd_server.n_conns, __ATOMIC_ACQUIRE);
}
