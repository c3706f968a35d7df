/*
 * JSON values: a refcounted tree, objects in insertion order with a hash
 * index once they grow. The parser is in json-parse.c, the generators and
 * the monitor's stream splitter in json-gen.c, QEMU's key order in
 * json-qemu.c.
 */
#include "json-int.h"

void *json_xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        abort();
    }
    return p;
}

static void *json_xrealloc(void *p, size_t n)
{
    p = realloc(p, n ? n : 1);
    if (!p) {
        abort();
    }
    return p;
}

VdJson *json_new(VdJsonType type)
{
    VdJson *v = calloc(1, sizeof(*v));
    if (!v) {
        abort();
    }
    v->refcnt = 1;
    v->type = type;
    return v;
}

VdJson *vd_json_null(void)
{
    return json_new(VD_JSON_NULL);
}

VdJson *vd_json_bool(bool b)
{
    VdJson *v = json_new(VD_JSON_BOOL);
    v->u.b = b;
    return v;
}

VdJson *vd_json_int(int64_t i)
{
    VdJson *v = json_new(VD_JSON_INT);
    v->u.i = i;
    return v;
}

/* Values that fit int64_t are stored as INT so that a type test for
 * integers needs one case in the common range. */
VdJson *vd_json_uint(uint64_t u)
{
    if (u <= INT64_MAX) {
        return vd_json_int((int64_t)u);
    }
    VdJson *v = json_new(VD_JSON_UINT);
    v->u.u = u;
    return v;
}

VdJson *vd_json_double(double d)
{
    VdJson *v = json_new(VD_JSON_DOUBLE);
    v->u.d = d;
    return v;
}

VdJson *vd_json_string_len(const char *s, size_t len)
{
    VdJson *v = json_new(VD_JSON_STRING);
    v->u.str.s = json_xmalloc(len + 1);
    if (len) {
        memcpy(v->u.str.s, s, len);
    }
    v->u.str.s[len] = '\0';
    v->u.str.len = len;
    return v;
}

VdJson *vd_json_string(const char *s)
{
    return vd_json_string_len(s ? s : "", s ? strlen(s) : 0);
}

VdJson *vd_json_array(void)
{
    return json_new(VD_JSON_ARRAY);
}

VdJson *vd_json_object(void)
{
    return json_new(VD_JSON_OBJECT);
}

VdJson *vd_json_ref(VdJson *v)
{
    if (v) {
        __atomic_add_fetch(&v->refcnt, 1, __ATOMIC_RELAXED);
    }
    return v;
}

void vd_json_unref(VdJson *v)
{
    if (!v || __atomic_sub_fetch(&v->refcnt, 1, __ATOMIC_ACQ_REL) != 0) {
        return;
    }
    switch (v->type) {
    case VD_JSON_STRING:
        free(v->u.str.s);
        break;
    case VD_JSON_ARRAY:
        for (size_t i = 0; i < v->u.arr.n; i++) {
            vd_json_unref(v->u.arr.items[i]);
        }
        free(v->u.arr.items);
        break;
    case VD_JSON_OBJECT:
        for (size_t i = 0; i < v->u.obj.n; i++) {
            free(v->u.obj.keys[i]);
            vd_json_unref(v->u.obj.vals[i]);
        }
        free(v->u.obj.keys);
        free(v->u.obj.vals);
        free(v->u.obj.index);
        break;
    default:
        break;
    }
    free(v);
}

static VdJson *json_deep_copy_value(const VdJson *v);

VdJson *vd_json_deep_copy(const VdJson *v)
{
    if (!v) {
        return NULL;
    }
    VdJson *c = json_deep_copy_value(v);
    c->typed = v->typed;
    return c;
}

static VdJson *json_deep_copy_value(const VdJson *v)
{
    switch (v->type) {
    case VD_JSON_NULL:
        return vd_json_null();
    case VD_JSON_BOOL:
        return vd_json_bool(v->u.b);
    case VD_JSON_INT:
        return vd_json_int(v->u.i);
    case VD_JSON_UINT:
        return vd_json_uint(v->u.u);
    case VD_JSON_DOUBLE:
        return vd_json_double(v->u.d);
    case VD_JSON_STRING:
        return vd_json_string_len(v->u.str.s, v->u.str.len);
    case VD_JSON_ARRAY: {
        VdJson *a = vd_json_array();
        for (size_t i = 0; i < v->u.arr.n; i++) {
            vd_json_array_append(a, vd_json_deep_copy(v->u.arr.items[i]));
        }
        return a;
    }
    case VD_JSON_OBJECT: {
        VdJson *o = vd_json_object();
        for (size_t i = 0; i < v->u.obj.n; i++) {
            vd_json_object_put(o, v->u.obj.keys[i], vd_json_deep_copy(v->u.obj.vals[i]));
        }
        return o;
    }
    }
    return NULL;
}

/* Marks every scalar of v as typed (or not); depth is bounded by the parser's
 * VD_JSON_MAX_DEPTH or by the caller's tree. */
void json_mark_typed(VdJson *v, bool typed)
{
    switch (v->type) {
    case VD_JSON_ARRAY:
        for (size_t i = 0; i < v->u.arr.n; i++) {
            json_mark_typed(v->u.arr.items[i], typed);
        }
        break;
    case VD_JSON_OBJECT:
        for (size_t i = 0; i < v->u.obj.n; i++) {
            json_mark_typed(v->u.obj.vals[i], typed);
        }
        break;
    default:
        v->typed = typed;
        break;
    }
}

bool vd_json_is_typed(const VdJson *v)
{
    return v && v->typed;
}

void vd_json_set_untyped(VdJson *v)
{
    if (v) {
        json_mark_typed(v, false);
    }
}

VdJsonType vd_json_type(const VdJson *v)
{
    return v ? v->type : VD_JSON_NULL;
}

bool vd_json_get_bool(const VdJson *v)
{
    return v && v->type == VD_JSON_BOOL && v->u.b;
}

/* Conversions clamp to the target range; NaN becomes 0. */
int64_t vd_json_get_int(const VdJson *v)
{
    if (!v) {
        return 0;
    }
    switch (v->type) {
    case VD_JSON_INT:
        return v->u.i;
    case VD_JSON_UINT:
        return INT64_MAX;
    case VD_JSON_DOUBLE:
        if (isnan(v->u.d)) {
            return 0;
        }
        if (v->u.d >= 9223372036854775808.0) {
            return INT64_MAX;
        }
        if (v->u.d <= -9223372036854775808.0) {
            return INT64_MIN;
        }
        return (int64_t)v->u.d;
    case VD_JSON_BOOL:
        return v->u.b;
    default:
        return 0;
    }
}

uint64_t vd_json_get_uint(const VdJson *v)
{
    if (!v) {
        return 0;
    }
    switch (v->type) {
    case VD_JSON_INT:
        return v->u.i < 0 ? 0 : (uint64_t)v->u.i;
    case VD_JSON_UINT:
        return v->u.u;
    case VD_JSON_DOUBLE:
        if (isnan(v->u.d) || v->u.d <= 0) {
            return 0;
        }
        if (v->u.d >= 18446744073709551616.0) {
            return UINT64_MAX;
        }
        return (uint64_t)v->u.d;
    case VD_JSON_BOOL:
        return v->u.b;
    default:
        return 0;
    }
}

double vd_json_get_double(const VdJson *v)
{
    if (!v) {
        return 0;
    }
    switch (v->type) {
    case VD_JSON_INT:
        return (double)v->u.i;
    case VD_JSON_UINT:
        return (double)v->u.u;
    case VD_JSON_DOUBLE:
        return v->u.d;
    case VD_JSON_BOOL:
        return v->u.b;
    default:
        return 0;
    }
}

const char *vd_json_get_string(const VdJson *v)
{
    return v && v->type == VD_JSON_STRING ? v->u.str.s : NULL;
}

/* ---- arrays ---- */

size_t vd_json_array_size(const VdJson *a)
{
    return a && a->type == VD_JSON_ARRAY ? a->u.arr.n : 0;
}

VdJson *vd_json_array_get(const VdJson *a, size_t i)
{
    if (!a || a->type != VD_JSON_ARRAY || i >= a->u.arr.n) {
        return NULL;
    }
    return a->u.arr.items[i];
}

void vd_json_array_append(VdJson *a, VdJson *v)
{
    assert(a && a->type == VD_JSON_ARRAY);
    if (!v) {
        v = vd_json_null();
    }
    if (a->u.arr.n == a->u.arr.cap) {
        a->u.arr.cap = a->u.arr.cap ? a->u.arr.cap * 2 : 4;
        a->u.arr.items = json_xrealloc(a->u.arr.items, a->u.arr.cap * sizeof(VdJson *));
    }
    a->u.arr.items[a->u.arr.n++] = v;
}

/* ---- objects ---- */

static uint32_t json_hash(const char *key)
{
    uint32_t h = 2166136261u;
    for (const unsigned char *p = (const unsigned char *)key; *p; p++) {
        h = (h ^ *p) * 16777619u;
    }
    return h;
}

static void json_index_insert(VdJson *o, size_t pos)
{
    size_t mask = o->u.obj.index_cap - 1;
    size_t slot = json_hash(o->u.obj.keys[pos]) & mask;
    while (o->u.obj.index[slot]) {
        slot = (slot + 1) & mask;
    }
    o->u.obj.index[slot] = (uint32_t)(pos + 1);
}

static void json_index_rebuild(VdJson *o)
{
    free(o->u.obj.index);
    o->u.obj.index = NULL;
    o->u.obj.index_cap = 0;
    if (o->u.obj.n < JSON_INDEX_MIN) {
        return;
    }
    size_t cap = 64;
    while (cap < o->u.obj.n * 2) {
        cap *= 2;
    }
    o->u.obj.index = calloc(cap, sizeof(uint32_t));
    if (!o->u.obj.index) {
        abort();
    }
    o->u.obj.index_cap = cap;
    for (size_t i = 0; i < o->u.obj.n; i++) {
        json_index_insert(o, i);
    }
}

/* Position of key in o, or -1. */
ssize_t json_object_find(const VdJson *o, const char *key)
{
    if (o->u.obj.index) {
        size_t mask = o->u.obj.index_cap - 1;
        size_t slot = json_hash(key) & mask;
        uint32_t e;
        while ((e = o->u.obj.index[slot]) != 0) {
            if (!strcmp(o->u.obj.keys[e - 1], key)) {
                return (ssize_t)(e - 1);
            }
            slot = (slot + 1) & mask;
        }
        return -1;
    }
    for (size_t i = 0; i < o->u.obj.n; i++) {
        if (!strcmp(o->u.obj.keys[i], key)) {
            return (ssize_t)i;
        }
    }
    return -1;
}

size_t vd_json_object_size(const VdJson *o)
{
    return o && o->type == VD_JSON_OBJECT ? o->u.obj.n : 0;
}

VdJson *vd_json_object_get(const VdJson *o, const char *key)
{
    if (!o || o->type != VD_JSON_OBJECT || !key) {
        return NULL;
    }
    ssize_t i = json_object_find(o, key);
    return i < 0 ? NULL : o->u.obj.vals[i];
}

void vd_json_object_put(VdJson *o, const char *key, VdJson *v)
{
    assert(o && o->type == VD_JSON_OBJECT && key);
    if (!v) {
        v = vd_json_null();
    }
    ssize_t i = json_object_find(o, key);
    if (i >= 0) {
        VdJson *old = o->u.obj.vals[i];
        o->u.obj.vals[i] = v;
        vd_json_unref(old);
        return;
    }
    if (o->u.obj.n == o->u.obj.cap) {
        o->u.obj.cap = o->u.obj.cap ? o->u.obj.cap * 2 : 4;
        o->u.obj.keys = json_xrealloc(o->u.obj.keys, o->u.obj.cap * sizeof(char *));
        o->u.obj.vals = json_xrealloc(o->u.obj.vals, o->u.obj.cap * sizeof(VdJson *));
    }
    char *k = strdup(key);
    if (!k) {
        abort();
    }
    size_t pos = o->u.obj.n++;
    o->u.obj.keys[pos] = k;
    o->u.obj.vals[pos] = v;
    if (o->u.obj.n >= JSON_INDEX_MIN) {
        if (o->u.obj.n * 2 > o->u.obj.index_cap) {
            json_index_rebuild(o);
        } else {
            json_index_insert(o, pos);
        }
    }
}

bool vd_json_object_del(VdJson *o, const char *key)
{
    if (!o || o->type != VD_JSON_OBJECT || !key) {
        return false;
    }
    ssize_t i = json_object_find(o, key);
    if (i < 0) {
        return false;
    }
    free(o->u.obj.keys[i]);
    vd_json_unref(o->u.obj.vals[i]);
    size_t tail = o->u.obj.n - (size_t)i - 1;
    memmove(&o->u.obj.keys[i], &o->u.obj.keys[i + 1], tail * sizeof(char *));
    memmove(&o->u.obj.vals[i], &o->u.obj.vals[i + 1], tail * sizeof(VdJson *));
    o->u.obj.n--;
    if (o->u.obj.index) {
        json_index_rebuild(o);
    }
    return true;
}

const char *vd_json_object_entry(const VdJson *o, size_t i, VdJson **value)
{
    if (!o || o->type != VD_JSON_OBJECT || i >= o->u.obj.n) {
        if (value) {
            *value = NULL;
        }
        return NULL;
    }
    if (value) {
        *value = o->u.obj.vals[i];
    }
    return o->u.obj.keys[i];
}

void vd_json_object_put_str(VdJson *o, const char *key, const char *s)
{
    vd_json_object_put(o, key, vd_json_string(s));
}

void vd_json_object_put_int(VdJson *o, const char *key, int64_t v)
{
    vd_json_object_put(o, key, vd_json_int(v));
}

void vd_json_object_put_bool(VdJson *o, const char *key, bool v)
{
    vd_json_object_put(o, key, vd_json_bool(v));
}
