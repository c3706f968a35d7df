/*
 * vdiskd's objects (IOThreads, block devices, the NBD server, exports) and
 * the operations the command line and the JSON monitor share. Main thread.
 */
#ifndef VDISKD_DAEMON_H
#define VDISKD_DAEMON_H

#include "vdisk/block.h"

/* Each takes opts (a VdOpts tree from the command line or monitor JSON). */
int vdd_object_add(VdOpts *opts, VdError **errp);
int vdd_object_del(const char *id, VdError **errp);
int vdd_blockdev_add(VdOpts *opts, VdError **errp);
int vdd_blockdev_del(const char *node_name, VdError **errp);
int vdd_nbd_server_start(VdOpts *opts, VdError **errp);
int vdd_nbd_server_stop(VdError **errp);
int vdd_export_add(VdOpts *opts, VdError **errp);
int vdd_export_del(const char *id, bool hard, VdError **errp);
/* Move node (a --blockdev top node) and its exports to iothread (NULL: main). */
int vdd_set_iothread(const char *node_name, const char *iothread, VdError **errp);
void vdd_cont(void);
/* qom-set / qom-get (qom.c): the "return" value, or NULL with errp set. */
bool vdd_qom_is_command(const char *cmd);
VdJson *vdd_qom_command(const char *cmd, VdJson *args, VdError **errp);

VdJson *vdd_query_iothreads(void);
VdJson *vdd_query_named_block_nodes(void);
VdJson *vdd_query_block_exports(void);

/* Monitor (monitor.c) */
int vdd_chardev_add(VdOpts *opts, VdError **errp);
int vdd_monitor_add(VdOpts *opts, VdError **errp);
/* Start accepting monitor clients (after the command line is processed). */
void vdd_monitor_start(void);
void vdd_monitor_close_all(void);
/* Send {"event": name, "data": data (taken), "timestamp": ...} to every
 * negotiated monitor client. */
void vdd_monitor_event(const char *name, VdJson *data);
/* Why the daemon stops: "host-qmp-quit" or "host-signal" (SHUTDOWN event). */
extern const char *g_vdd_quit_reason;

extern volatile bool g_vdd_quit;
/* Stop accepting, drain exports, flush and close images, stop IOThreads. */
void vdd_shutdown(void);

#endif
