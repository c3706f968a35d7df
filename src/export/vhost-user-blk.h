/*
 * vhost-user-blk export: serves a backend as a virtio-blk device to one
 * vhost-user front-end (a VMM such as QEMU) at a time over a UNIX socket.
 * The rings, the control socket and the requests all run in the backend's
 * AioContext. Functions here are main-thread only unless noted.
 */
#ifndef VDISK_EXPORT_VHOST_USER_BLK_H
#define VDISK_EXPORT_VHOST_USER_BLK_H

#include "vdisk/block.h"

typedef struct VdVhuExport VdVhuExport;

typedef struct VdVhuExportConfig {
    const char *id;
    VdBackend *blk;            /* borrowed, must outlive the export */
    const char *path;          /* UNIX socket path (replaced if it exists) */
    bool writable;
    unsigned num_queues;       /* 0: 1 */
    unsigned logical_block_size; /* 0: 512 */
    const char *serial;        /* GET_ID answer; NULL: the id */
} VdVhuExportConfig;

VdVhuExport *vd_vhu_export_add(const VdVhuExportConfig *cfg, VdError **errp);
/* -ENOENT if no such export; hard=false refuses (EBUSY) while a front-end
 * is connected, hard=true disconnects it (in-flight requests finish). */
int vd_vhu_export_del(const char *id, bool hard, VdError **errp);
VdVhuExport *vd_vhu_export_find(const char *id);
VdVhuExport *vd_vhu_export_next(VdVhuExport *prev);
const char *vd_vhu_export_id(VdVhuExport *e);
VdBackend *vd_vhu_export_backend(VdVhuExport *e);
bool vd_vhu_export_writable(VdVhuExport *e);
int vd_vhu_export_n_clients(VdVhuExport *e);
bool vd_vhu_backend_in_use(VdBackend *blk);

/* IOThread moves (export.c): stop the rings and the control socket of every
 * export of blk and let in-flight requests finish; quiesced() says when
 * nothing runs; resume() restarts them in blk's (new) context. */
void vd_vhu_quiesce(VdBackend *blk);
bool vd_vhu_quiesced(VdBackend *blk);
void vd_vhu_resume(VdBackend *blk);

/* Disconnect every front-end (in-flight requests complete and are
 * published to the used rings first) and delete every export. */
void vd_vhu_shutdown_all(void);

/* For tests: cap on the number of requests a ring may have in flight. */
#define VD_VHU_MAX_QUEUES 16

#endif
