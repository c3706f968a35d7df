/*
 * Throttle groups (docs/filters.md, "throttle"): named I/O budgets that
 * throttle filter nodes (driver=throttle,throttle-group=<id>) share. The
 * limits have QEMU's names and meaning (ThrottleLimits: iops-total,
 * bps-read-max, iops-size, ...). Tools and the daemon create, change and
 * delete groups through this API; the filter finds them by id.
 *
 * Threading: every function here may be called from any thread; the group
 * state is protected by a small per-group lock.
 */
#ifndef VDISK_THROTTLE_H
#define VDISK_THROTTLE_H

#include "vdisk/common.h"
#include "vdisk/error.h"
#include "vdisk/opts.h"

VD_EXTERN_C_BEGIN

/*
 * Create group id from an --object / object-add option tree (qom-type
 * already removed or equal to "throttle-group"; "id" may be in opts or given).
 * Limits come as "limits": {"iops-total": ..} (limits.iops-total=.. on a
 * command line) and/or as QEMU's x-iops-total=.. properties. Every key of
 * opts is consumed; a leftover is an error. opts is not taken.
 * Returns 0, -EEXIST (id taken), -EINVAL (bad limits: errp says which).
 */
int vd_throttle_group_create(const char *id, VdOpts *opts, VdError **errp);
/* Delete a group. -ENOENT if unknown, -EBUSY (with the node that uses it)
 * while a throttle node is a member. */
int vd_throttle_group_delete(const char *id, VdError **errp);
bool vd_throttle_group_exists(const char *id);

/*
 * qom-set / qom-get: property "limits" (a ThrottleLimits object: keys given
 * change, others keep their value, as QEMU's throttle_group_set_limits) or
 * one "x-<limit>" property (an integer). A change resets the buckets
 * (throttle_config) and takes effect for queued requests at once.
 * get returns a new value (the full ThrottleLimits object for "limits").
 */
int vd_throttle_group_set_prop(const char *id, const char *prop, const VdJson *value,
                               VdError **errp);
VdJson *vd_throttle_group_get_prop(const char *id, const char *prop, VdError **errp);

/* For tools (vdisk-img/vdisk-io --object): handle a parsed --object option
 * tree if its qom-type is throttle-group (opts taken). Returns 0, or -errno
 * with errp set; -ENOTSUP (errp set) for another qom-type. */
int vd_throttle_object_add(VdOpts *opts, VdError **errp);

VD_EXTERN_C_END

#endif
