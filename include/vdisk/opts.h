/*
 * Option trees: the dotted key=value syntax users know from qemu-img
 * --image-opts and qemu-storage-daemon (`driver=qcow2,file.filename=a.qcow2`),
 * and the same tree in JSON (`json:{"driver":"qcow2","file":{...}}`).
 *
 * An option tree is a VdJson object. Dotted keys become nested objects;
 * values from key=value strings are JSON strings, values from JSON keep
 * their JSON type. The typed getters accept both ("on"/true, "64k"/65536).
 * Keys are consumed as drivers read them so that leftovers can be reported
 * ("Block format 'raw' does not support the option 'foo'").
 */
#ifndef VDISK_OPTS_H
#define VDISK_OPTS_H

#include "vdisk/common.h"
#include "vdisk/error.h"
#include "vdisk/json.h"

VD_EXTERN_C_BEGIN

typedef VdJson VdOpts;

/*
 * Parse "k1=v1,k2.sub=v2,..." (",," escapes a comma inside a value). If the
 * first element has no '=' and implied_key is non-NULL, it is the value of
 * implied_key (e.g. "iothread,id=io0" with implied_key "qom-type").
 * A string starting with '{' or "json:{" is parsed as JSON instead.
 * Duplicate keys: the last one wins. Returns a new object or NULL + errp.
 */
VdOpts *vd_opts_parse(const char *str, const char *implied_key, VdError **errp);

/* Merge "a.b=c" style key into tree: set dotted key to a string value. */
void vd_opts_set(VdOpts *opts, const char *dotted_key, const char *value);
void vd_opts_set_json(VdOpts *opts, const char *dotted_key, VdJson *value /* taken */);

/* Look up a dotted key. Returns borrowed value or NULL. */
VdJson *vd_opts_lookup(const VdOpts *opts, const char *dotted_key);

/* The typed getters look the key up and remove it from opts (it is
 * "consumed"). If the key is absent they return 0 and leave *out = def.
 * On a bad value they return -EINVAL with a message naming key and value. */
int vd_opts_take_str(VdOpts *opts, const char *key, const char *def, char **out, VdError **errp); /* *out malloc'ed or NULL */
int vd_opts_take_bool(VdOpts *opts, const char *key, bool def, bool *out, VdError **errp);        /* on/off/true/false/yes/no */
int vd_opts_take_uint(VdOpts *opts, const char *key, uint64_t def, uint64_t *out, VdError **errp);
int vd_opts_take_int(VdOpts *opts, const char *key, int64_t def, int64_t *out, VdError **errp);
int vd_opts_take_size(VdOpts *opts, const char *key, uint64_t def, uint64_t *out, VdError **errp); /* 512, 64k, 1M, 1G, 1T, 1.5G */
/* As vd_opts_take_size, but the key stays in opts (which may be NULL): for
 * an option more than one layer reads (a create's size). */
int vd_opts_get_size(const VdOpts *opts, const char *key, uint64_t def, uint64_t *out,
                     VdError **errp);
/* Choose from a NULL-terminated list of names; *out is the index. */
int vd_opts_take_enum(VdOpts *opts, const char *key, const char *const *names, int def, int *out, VdError **errp);

/* Remove and return the subtree under key (an object), or NULL if absent or
 * not an object. Caller owns the result. */
VdOpts *vd_opts_take_sub(VdOpts *opts, const char *key);

/* Fail with "<what> does not support the option '<key>'" if any key is left
 * (reports the first leftover dotted key). what: e.g. "Block format 'raw'". */
int vd_opts_check_empty(const VdOpts *opts, const char *what, VdError **errp);

/* Parse a size with optional suffix (k/K, M, G, T, P, E; fractional allowed
 * as qemu-img does: "1.5G"). Returns 0 or -EINVAL/-ERANGE. */
int vd_parse_size(const char *str, uint64_t *out);
/* Strict unsigned / signed integer parsing (decimal, 0x hex). */
int vd_parse_uint(const char *str, uint64_t *out);
int vd_parse_int(const char *str, int64_t *out);
int vd_parse_bool(const char *str, bool *out);

/* Flatten a tree back into "a.b=c,..." form (commas in values doubled). */
char *vd_opts_to_string(const VdOpts *opts);

VD_EXTERN_C_END

#endif
