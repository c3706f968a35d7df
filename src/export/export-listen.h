/*
 * Listening sockets shared by every export type (NBD, vhost-user-blk) and
 * the monitor: binding a UNIX socket so that it is connectable as soon as
 * its path exists, and accepting in the main context with pause/resume and
 * a back-off when the process is out of file descriptors. Main thread only.
 */
#ifndef VDISK_EXPORT_EXPORT_LISTEN_H
#define VDISK_EXPORT_EXPORT_LISTEN_H

#include "vdisk/error.h"

/* Bind a listening UNIX socket at path (an existing socket file there is
 * replaced). The socket is bound under a temporary name and renamed into
 * place once listening, so a client that sees the path can connect.
 * Returns the non-blocking, close-on-exec fd or -errno with errp set. */
int vd_unix_socket_listen(const char *path, int backlog, VdError **errp);

typedef struct VdListener VdListener;
/* Called in the main thread with a new non-blocking, close-on-exec socket
 * (ownership passes to the callee). */
typedef void VdListenerAccept(void *opaque, int fd);

/* Accept on a listening fd (taken), calling cb for every connection.
 * unix_path: the socket's path, removed on free (NULL for TCP). paused:
 * start without accepting (clients wait in the backlog). */
VdListener *vd_listener_new(int fd, const char *unix_path, bool paused,
                            VdListenerAccept *cb, void *opaque);
/* vd_unix_socket_listen + vd_listener_new, accepting at once. */
VdListener *vd_unix_listener_new(const char *path, VdListenerAccept *cb, void *opaque,
                                 VdError **errp);
/* Stop / restart accepting (connections wait in the backlog meanwhile). */
void vd_listener_pause(VdListener *l);
void vd_listener_resume(VdListener *l);
/* The UNIX path given at creation, or NULL. */
const char *vd_listener_unix_path(const VdListener *l);
/* Close the socket and remove its path. NULL is a no-op. */
void vd_listener_free(VdListener *l);

#endif
