/*
 * qom-set / qom-get on the monitor: the properties of vdiskd's user-created
 * objects that can change at run time. Today that is a throttle group's
 * "limits" (and its x-<limit> properties), as in qemu-storage-daemon.
 */
#include <errno.h>
#include <string.h>
#include "vdisk/throttle.h"
#include "daemon.h"

/* "/objects/tg0" (QEMU's canonical path) or just "tg0". */
static const char *qom_object_id(const char *path)
{
    static const char prefix[] = "/objects/";
    if (!strncmp(path, prefix, sizeof(prefix) - 1)) {
        return path + sizeof(prefix) - 1;
    }
    return path;
}

bool vdd_qom_is_command(const char *cmd)
{
    return !strcmp(cmd, "qom-set") || !strcmp(cmd, "qom-get");
}

VdJson *vdd_qom_command(const char *cmd, VdJson *args, VdError **errp)
{
    VdJson *path = args ? vd_json_object_get(args, "path") : NULL;
    VdJson *prop = args ? vd_json_object_get(args, "property") : NULL;
    if (!path || vd_json_type(path) != VD_JSON_STRING || !prop ||
        vd_json_type(prop) != VD_JSON_STRING) {
        vd_error_setg(errp, EINVAL, "Parameters 'path' and 'property' (strings) are required");
        return NULL;
    }
    const char *id = qom_object_id(vd_json_get_string(path));
    if (!vd_throttle_group_exists(id)) {
        vd_error_setg(errp, ENOENT, "Device '%s' not found", vd_json_get_string(path));
        return NULL;
    }
    if (!strcmp(cmd, "qom-get")) {
        return vd_throttle_group_get_prop(id, vd_json_get_string(prop), errp);
    }
    VdJson *value = vd_json_object_get(args, "value");
    if (!value) {
        vd_error_setg(errp, EINVAL, "Parameter 'value' is missing");
        return NULL;
    }
    if (vd_throttle_group_set_prop(id, vd_json_get_string(prop), value, errp) < 0) {
        return NULL;
    }
    return vd_json_object();
}
