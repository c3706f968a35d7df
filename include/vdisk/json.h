/*
 * A small JSON value tree: the parser and generator behind `json:{...}`
 * filenames, --output=json of the tools and the daemon's monitor.
 * Objects keep insertion order (output order matters for qemu-img compatible
 * output). Parsing is bounded: depth <= VD_JSON_MAX_DEPTH, input length as given.
 */
#ifndef VDISK_JSON_H
#define VDISK_JSON_H

#include "vdisk/common.h"
#include "vdisk/error.h"

VD_EXTERN_C_BEGIN

#define VD_JSON_MAX_DEPTH 64

typedef enum VdJsonType {
    VD_JSON_NULL,
    VD_JSON_BOOL,
    VD_JSON_INT,      /* integer that fits int64_t */
    VD_JSON_UINT,     /* integer > INT64_MAX that fits uint64_t */
    VD_JSON_DOUBLE,
    VD_JSON_STRING,
    VD_JSON_ARRAY,
    VD_JSON_OBJECT,
} VdJsonType;

typedef struct VdJson VdJson;

/* Constructors: each returns a new value with refcount 1. */
VdJson *vd_json_null(void);
VdJson *vd_json_bool(bool v);
VdJson *vd_json_int(int64_t v);
VdJson *vd_json_uint(uint64_t v);
VdJson *vd_json_double(double v);
VdJson *vd_json_string(const char *s);            /* copies s */
VdJson *vd_json_string_len(const char *s, size_t len);
VdJson *vd_json_array(void);
VdJson *vd_json_object(void);

VdJson *vd_json_ref(VdJson *v);
void vd_json_unref(VdJson *v);                     /* NULL is fine */
VdJson *vd_json_deep_copy(const VdJson *v);

VdJsonType vd_json_type(const VdJson *v);
bool vd_json_get_bool(const VdJson *v);
int64_t vd_json_get_int(const VdJson *v);          /* INT/UINT/DOUBLE converted */
uint64_t vd_json_get_uint(const VdJson *v);
double vd_json_get_double(const VdJson *v);
const char *vd_json_get_string(const VdJson *v);  /* NULL unless STRING */

/* Arrays */
size_t vd_json_array_size(const VdJson *a);
VdJson *vd_json_array_get(const VdJson *a, size_t i);     /* borrowed */
void vd_json_array_append(VdJson *a, VdJson *v);           /* takes v */

/* Objects: keys are unique; put replaces an existing key in place. */
size_t vd_json_object_size(const VdJson *o);
VdJson *vd_json_object_get(const VdJson *o, const char *key);    /* borrowed or NULL */
void vd_json_object_put(VdJson *o, const char *key, VdJson *v);  /* takes v */
bool vd_json_object_del(VdJson *o, const char *key);
/* i-th entry in insertion order; returns the key, *value borrowed. */
const char *vd_json_object_entry(const VdJson *o, size_t i, VdJson **value);
/* Convenience puts */
void vd_json_object_put_str(VdJson *o, const char *key, const char *s);
void vd_json_object_put_int(VdJson *o, const char *key, int64_t v);
void vd_json_object_put_bool(VdJson *o, const char *key, bool v);

/* Parse exactly one JSON value (surrounding white space allowed). Errors say
 * where: "JSON parse error at offset 12: expected ':'". "\u0000" is refused
 * (as QEMU: strings are C strings). Every scalar it returns is typed. */
VdJson *vd_json_parse(const char *text, size_t len, VdError **errp);

/*
 * Typed values: a scalar read from JSON text has the type the user wrote, and
 * option getters (opts.h) do not convert it ("size":"12" is not a size, as in
 * QMP). Values built in code and key=value text are untyped: their strings
 * convert to numbers and booleans. vd_json_set_untyped clears the mark in v
 * and below (QEMU reads json: filenames as leniently as key=value).
 */
bool vd_json_is_typed(const VdJson *v);
void vd_json_set_untyped(VdJson *v);

/*
 * Streaming parser for the monitor: feed bytes, get complete top-level values.
 * vd_json_stream_feed returns 0, or -EINVAL on a syntax error (the stream
 * then resynchronises at the next top-level '{'), calling cb for each value.
 */
typedef struct VdJsonStream VdJsonStream;
typedef void VdJsonStreamCb(void *opaque, VdJson *value /* taken */, VdError *err /* taken */);
VdJsonStream *vd_json_stream_new(VdJsonStreamCb *cb, void *opaque, size_t max_value_bytes);
void vd_json_stream_feed(VdJsonStream *s, const char *buf, size_t len);
void vd_json_stream_free(VdJsonStream *s);

/* Serialise. pretty: qemu-img's --output=json layout (4-space indent,
 * "key": value). Returns a malloc'ed string. */
char *vd_json_to_string(const VdJson *v, bool pretty);

/* Reorder the keys of every object in v (recursively) into the order in
 * which QEMU's tools print a dictionary (its hash-table order), so JSON output
 * matches qemu-img's byte for byte. vd_node_info's result is already ordered.
 * (json-qemu.c) */
void vd_json_qemu_order(VdJson *v);
/* Serialise v on one line the way QEMU writes json: filenames
 * ({"a": 1, "b": {"c": "d"}}, keys in the order they are in). malloc'ed. */
char *vd_json_to_qemu_string(const VdJson *v);

VD_EXTERN_C_END

#endif
