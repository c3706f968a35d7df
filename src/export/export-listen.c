/*
 * Listening UNIX sockets for exports: bind, accept in the main context,
 * pause while the export cannot take a connection, back off when out of
 * file descriptors.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "vdisk/aio.h"
#include "export/export-listen.h"

struct VdUnixListener {
    int fd;
    char *path;
    VdListenerAccept *cb;
    void *opaque;
    bool paused;
    VdTimer *retry;
};

static void listener_accept(void *opaque);

static void listener_arm(VdUnixListener *l, bool on)
{
    vd_aio_set_fd_handler(vd_aio_main_context(), l->fd, on ? listener_accept : NULL, NULL, NULL,
                          NULL, on ? l : NULL);
}

static void listener_retry(void *opaque)
{
    VdUnixListener *l = opaque;
    if (!l->paused) {
        listener_arm(l, true);
    }
}

static void listener_accept(void *opaque)
{
    VdUnixListener *l = opaque;

    while (!l->paused) {
        int fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                listener_arm(l, false);
                vd_timer_mod(l->retry, vd_clock_ns() + 100 * 1000 * 1000);
            }
            return;
        }
        l->cb(l->opaque, fd);
    }
}

VdUnixListener *vd_unix_listener_new(const char *path, VdListenerAccept *cb, void *opaque,
                                     VdError **errp)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };

    if (strlen(path) >= sizeof(sa.sun_path)) {
        vd_error_setg(errp, ENAMETOOLONG, "UNIX socket path '%s' is too long", path);
        return NULL;
    }
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        vd_error_setg_errno(errp, errno, "Failed to create socket");
        return NULL;
    }
    unlink(path);
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 16) < 0) {
        int err = errno;
        vd_error_setg_errno(errp, err, "Failed to bind socket to %s", path);
        close(fd);
        return NULL;
    }
    VdUnixListener *l = calloc(1, sizeof(*l));
    l->fd = fd;
    l->path = strdup(path);
    l->cb = cb;
    l->opaque = opaque;
    l->retry = vd_timer_new(vd_aio_main_context(), listener_retry, l);
    listener_arm(l, true);
    return l;
}

void vd_unix_listener_pause(VdUnixListener *l)
{
    if (!l->paused) {
        l->paused = true;
        vd_timer_del(l->retry);
        listener_arm(l, false);
    }
}

void vd_unix_listener_resume(VdUnixListener *l)
{
    if (l->paused) {
        l->paused = false;
        listener_arm(l, true);
    }
}

void vd_unix_listener_free(VdUnixListener *l)
{
    if (!l) {
        return;
    }
    listener_arm(l, false);
    vd_timer_free(l->retry);
    close(l->fd);
    unlink(l->path);
    free(l->path);
    free(l);
}
