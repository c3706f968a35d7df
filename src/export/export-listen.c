/*
 * Listening sockets for exports and the monitor: bind a UNIX socket that is
 * connectable as soon as its path exists, accept in the main context, pause
 * while the owner cannot take a connection, back off when out of file
 * descriptors (the listener stays readable: re-arming at once would spin).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "vdisk/aio.h"
#include "export/export-listen.h"

#define LISTEN_EMFILE_BACKOFF_NS (100 * 1000 * 1000)

struct VdListener {
    int fd;
    char *unix_path;
    VdListenerAccept *cb;
    void *opaque;
    bool paused;
    VdTimer *retry;               /* re-arms accept after EMFILE and the like */
};

int vd_unix_socket_listen(const char *path, int backlog, VdError **errp)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    char tmp[sizeof(sa.sun_path)];

    if (strlen(path) >= sizeof(sa.sun_path)) {
        vd_error_setg(errp, ENAMETOOLONG, "UNIX socket path '%s' is too long", path);
        return -ENAMETOOLONG;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        vd_error_setg_errno(errp, errno, "Failed to create socket");
        return -errno;
    }
    /* bind() creates the file before listen() makes it connectable: bind a
     * temporary name and rename it into place once listening. Paths too
     * long for the temporary name are bound directly. */
    int n = snprintf(tmp, sizeof(tmp), "%s.%d.tmp", path, (int)getpid());
    bool use_tmp = n > 0 && (size_t)n < sizeof(tmp);
    strcpy(sa.sun_path, use_tmp ? tmp : path);
    unlink(sa.sun_path);
    if (!use_tmp) {
        unlink(path);
    }
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, backlog) < 0 ||
        (use_tmp && rename(tmp, path) < 0)) {
        int err = errno;
        vd_error_setg_errno(errp, err, "Failed to bind socket to %s", path);
        if (use_tmp) {
            unlink(tmp);
        }
        close(fd);
        return -err;
    }
    return fd;
}

static void listener_accept(void *opaque);

static void listener_arm(VdListener *l, bool on)
{
    vd_aio_set_fd_handler(vd_aio_main_context(), l->fd, on ? listener_accept : NULL, NULL, NULL,
                          NULL, on ? l : NULL);
}

static void listener_retry(void *opaque)
{
    VdListener *l = opaque;
    if (!l->paused) {
        listener_arm(l, true);
    }
}

static void listener_accept(void *opaque)
{
    VdListener *l = opaque;

    while (!l->paused) {
        int fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                listener_arm(l, false);
                vd_timer_mod(l->retry, vd_clock_ns() + LISTEN_EMFILE_BACKOFF_NS);
            }
            return;
        }
        l->cb(l->opaque, fd);
    }
}

VdListener *vd_listener_new(int fd, const char *unix_path, bool paused,
                            VdListenerAccept *cb, void *opaque)
{
    VdListener *l = calloc(1, sizeof(*l));
    if (!l) {
        abort();
    }
    l->fd = fd;
    l->unix_path = unix_path ? strdup(unix_path) : NULL;
    l->cb = cb;
    l->opaque = opaque;
    l->paused = paused;
    l->retry = vd_timer_new(vd_aio_main_context(), listener_retry, l);
    if (!paused) {
        listener_arm(l, true);
    }
    return l;
}

VdListener *vd_unix_listener_new(const char *path, VdListenerAccept *cb, void *opaque,
                                 VdError **errp)
{
    int fd = vd_unix_socket_listen(path, 16, errp);
    return fd < 0 ? NULL : vd_listener_new(fd, path, false, cb, opaque);
}

void vd_listener_pause(VdListener *l)
{
    if (!l->paused) {
        l->paused = true;
        vd_timer_del(l->retry);
        listener_arm(l, false);
    }
}

void vd_listener_resume(VdListener *l)
{
    if (l->paused) {
        l->paused = false;
        listener_arm(l, true);
    }
}

const char *vd_listener_unix_path(const VdListener *l)
{
    return l->unix_path;
}

void vd_listener_free(VdListener *l)
{
    if (!l) {
        return;
    }
    listener_arm(l, false);
    vd_timer_free(l->retry);
    close(l->fd);
    if (l->unix_path) {
        unlink(l->unix_path);
        free(l->unix_path);
    }
    free(l);
}
