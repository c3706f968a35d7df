/*
 * Export registry and NBD server API used by vdiskd (and tests, the fuzzer).
 * An export serves one backend under a name; its connections run in the
 * backend's AioContext. All functions here are main-thread only unless noted.
 */
#ifndef VDISK_EXPORT_EXPORT_H
#define VDISK_EXPORT_EXPORT_H

#include "vdisk/block.h"
#include "export/vhost-user-blk.h"   /* the vhost-user-blk export type (vd_vhu_*) */

typedef struct VdExport VdExport;
typedef struct NbdConn NbdConn;

struct VdExport {
    char *id;
    char *name;              /* NBD export name */
    char *description;       /* "" if none */
    VdBackend *blk;          /* borrowed: its owner (vdiskd's blockdev) outlives the export */
    bool writable;
    uint32_t min_block;      /* advertised minimum block size (power of two) */
    uint32_t max_block;      /* advertised maximum block size */
    int64_t size;            /* at export time */
    /* Connection state, guarded by the server lock (nbd-*.c). */
    bool quiescing;          /* atomic: connections park instead of reading requests */
    bool deleting;
    int n_conns;
    NbdConn *conns;
    VdExport *next;
};

typedef struct VdExportConfig {
    const char *id;
    const char *name;          /* NULL: the node name */
    const char *description;   /* NULL: none */
    VdBackend *blk;            /* borrowed, must outlive the export */
    bool writable;
    uint32_t min_block;        /* 0: 1 */
} VdExportConfig;

VdExport *vd_export_add(const VdExportConfig *cfg, VdError **errp);
/* Remove an export. hard=false fails with EBUSY while clients are connected;
 * hard=true disconnects them (in-flight requests finish first). */
int vd_export_del(const char *id, bool hard, VdError **errp);
VdExport *vd_export_find(const char *id);
/* Lookup by NBD name; "" selects the export named "" or, failing that, the
 * only export if there is exactly one. Any thread with the server lock held
 * by the caller (nbd-*.c) or the main thread. */
VdExport *vd_export_find_by_name(const char *name, size_t len);
VdExport *vd_export_next(VdExport *prev);
/* The same including exports being deleted (the export layer's own walks). */
VdExport *vd_export_next_any(VdExport *prev);
int vd_export_n_clients(VdExport *exp);

/* Move blk (its node subtree) and the connections of every export serving it
 * to ctx: connections stop reading new requests, in-flight ones finish, the
 * node is drained and moved, connections resume in ctx. No request is lost. */
int vd_export_set_backend_context(VdBackend *blk, VdAioContext *ctx, VdError **errp);
bool vd_export_backend_in_use(VdBackend *blk);

/* Graceful shutdown: stop reading new requests on every connection, let
 * in-flight requests reply, close all connections, then drop every export. */
void vd_export_shutdown_all(void);

/* ---- NBD server ---- */

/* A non-blocking listening UNIX socket on path (replaced if it exists); the
 * path appears only once the socket is listening. Returns the fd or -errno. */
int vd_unix_socket_listen(const char *path, int backlog, VdError **errp);
/* Listen on a UNIX socket path (replaced if it exists) or a TCP host/port. */
int vd_nbd_server_listen_unix(const char *path, VdError **errp);
int vd_nbd_server_listen_inet(const char *host, const char *port, VdError **errp);
/* 0 = unlimited. Further connections are closed right after accept. */
void vd_nbd_server_set_max_connections(int max);
bool vd_nbd_server_running(void);
/* on=false: listeners keep listening (clients wait in the backlog) but no
 * connection is accepted until on=true. Default on. */
void vd_nbd_server_set_accepting(bool on);
/* Stop accepting connections (existing ones stay). */
void vd_nbd_server_close_listeners(void);
/* Close listeners and disconnect every client. */
void vd_nbd_server_stop(void);
/* Serve an already connected socket (tests, the fuzzer); takes fd. */
void vd_nbd_server_add_client(int fd);
/* Handshake timeout in nanoseconds (default 10 s). */
void vd_nbd_server_set_handshake_timeout(int64_t ns);
int vd_nbd_server_n_clients(void);

/* Internal (export.c <-> nbd-*.c). */
void nbd_export_quiesce(VdExport *exp);
bool nbd_export_all_parked(VdExport *exp);
void nbd_export_resume(VdExport *exp);
/* Cut connections that did not park (e.g. a client not reading replies). */
void nbd_export_abort_unparked(VdExport *exp);
void nbd_export_disconnect(VdExport *exp, bool graceful);
/* The same for every export at once (one grace period for all). */
void nbd_exports_disconnect_all(bool graceful);
void nbd_server_lock(void);
void nbd_server_unlock(void);

#endif
