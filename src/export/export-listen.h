/*
 * A listening UNIX socket in the main context, shared by export types that
 * accept their own connections (vhost-user-blk today). Main thread only.
 */
#ifndef VDISK_EXPORT_EXPORT_LISTEN_H
#define VDISK_EXPORT_EXPORT_LISTEN_H

#include "vdisk/error.h"

typedef struct VdUnixListener VdUnixListener;
/* Called in the main thread with a new non-blocking, close-on-exec socket
 * (ownership passes to the callee). */
typedef void VdListenerAccept(void *opaque, int fd);

/* Bind path (an existing socket file there is replaced) and start accepting. */
VdUnixListener *vd_unix_listener_new(const char *path, VdListenerAccept *cb, void *opaque,
                                     VdError **errp);
/* Stop / restart accepting (connections wait in the backlog meanwhile). */
void vd_unix_listener_pause(VdUnixListener *l);
void vd_unix_listener_resume(VdUnixListener *l);
/* Close the socket and remove its path. NULL is a no-op. */
void vd_unix_listener_free(VdUnixListener *l);

#endif
