/*
 * JSON values (refcounted tree, objects in insertion order), a strict
 * RFC 8259 parser with bounded depth, the compact and qemu-img "pretty"
 * generators, and the incremental stream splitter used by the monitor.
 */
#include <assert.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "vdisk/json.h"
#include "strbuf.h"

/* Objects with at least this many keys get a hash index for lookups. */
#define JSON_INDEX_MIN 16

struct VdJson {
    int refcnt;
    bool typed;            /* read from JSON text: no conversion in option getters */
    VdJsonType type;
    union {
        bool b;
        int64_t i;
        uint64_t u;
        double d;
        struct {
            char *s;       /* NUL-terminated; may hold NULs from \u0000 */
            size_t len;
        } str;
        struct {
            VdJson **items;
            size_t n, cap;
        } arr;
        struct {
            char **keys;
            VdJson **vals;
            size_t n, cap;
            uint32_t *index;   /* open addressing, entry = position + 1 */
            size_t index_cap;  /* 0 or a power of two */
        } obj;
    } u;
};

static void *json_xmalloc(size_t n)
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

static VdJson *json_new(VdJsonType type)
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
static void json_mark_typed(VdJson *v, bool typed)
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
static ssize_t json_object_find(const VdJson *o, const char *key)
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

/* ---- parser ---- */

typedef struct JsonParser {
    const char *p;        /* start of input */
    size_t len;
    size_t pos;
    VdError **errp;
    bool failed;
} JsonParser;

VD_PRINTF(3, 4) static void json_fail(JsonParser *ps, size_t at, const char *fmt, ...)
{
    if (ps->failed) {
        return;
    }
    ps->failed = true;
    char msg[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    vd_error_setg(ps->errp, EINVAL, "JSON parse error at offset %zu: %s", at, msg);
}

static void json_skip_ws(JsonParser *ps)
{
    while (ps->pos < ps->len) {
        char c = ps->p[ps->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') {
            break;
        }
        ps->pos++;
    }
}

static int json_peek(JsonParser *ps)
{
    return ps->pos < ps->len ? (unsigned char)ps->p[ps->pos] : -1;
}

/* Describe the byte at pos for error messages. */
static const char *json_describe(JsonParser *ps, char *buf, size_t size)
{
    int c = json_peek(ps);
    if (c < 0) {
        return "end of input";
    }
    if (c >= 0x20 && c < 0x7f) {
        snprintf(buf, size, "'%c'", c);
    } else {
        snprintf(buf, size, "byte 0x%02x", c);
    }
    return buf;
}

static void json_put_utf8(StrBuf *b, uint32_t cp)
{
    char out[4];
    size_t n;
    if (cp < 0x80) {
        out[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        n = 2;
    } else if (cp < 0x10000) {
        out[0] = (char)(0xe0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        n = 3;
    } else {
        out[0] = (char)(0xf0 | (cp >> 18));
        out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
        out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[3] = (char)(0x80 | (cp & 0x3f));
        n = 4;
    }
    strbuf_add(b, out, n);
}

/*
 * Decode one UTF-8 sequence at s[0..avail). Returns its length and sets *cp,
 * or returns 0 for an invalid, overlong, surrogate or truncated sequence.
 */
static size_t json_utf8_decode(const unsigned char *s, size_t avail, uint32_t *cp)
{
    unsigned char c = s[0];
    size_t n;
    uint32_t v, min;
    if (c < 0x80) {
        *cp = c;
        return 1;
    } else if ((c & 0xe0) == 0xc0) {
        n = 2; v = c & 0x1f; min = 0x80;
    } else if ((c & 0xf0) == 0xe0) {
        n = 3; v = c & 0x0f; min = 0x800;
    } else if ((c & 0xf8) == 0xf0) {
        n = 4; v = c & 0x07; min = 0x10000;
    } else {
        return 0;
    }
    if (avail < n) {
        return 0;
    }
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80) {
            return 0;
        }
        v = (v << 6) | (s[i] & 0x3f);
    }
    if (v < min || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff)) {
        return 0;
    }
    *cp = v;
    return n;
}

static int json_hex4(JsonParser *ps, size_t at, uint32_t *out)
{
    if (ps->len - at < 4) {
        return -1;
    }
    uint32_t v = 0;
    for (size_t i = 0; i < 4; i++) {
        char c = ps->p[at + i];
        v <<= 4;
        if (c >= '0' && c <= '9') {
            v |= (uint32_t)(c - '0');
        } else if (c >= 'a' && c <= 'f') {
            v |= (uint32_t)(c - 'a' + 10);
        } else if (c >= 'A' && c <= 'F') {
            v |= (uint32_t)(c - 'A' + 10);
        } else {
            return -1;
        }
    }
    *out = v;
    return 0;
}

/* Parses a string starting at the opening quote into b. */
static bool json_parse_string_into(JsonParser *ps, StrBuf *b)
{
    size_t start = ps->pos;
    ps->pos++; /* opening quote */
    for (;;) {
        /* Copy a run of plain ASCII bytes in one go. */
        size_t run = ps->pos;
        while (run < ps->len) {
            unsigned char c = (unsigned char)ps->p[run];
            if (c == '"' || c == '\\' || c < 0x20 || c >= 0x80) {
                break;
            }
            run++;
        }
        if (run > ps->pos) {
            strbuf_add(b, ps->p + ps->pos, run - ps->pos);
            ps->pos = run;
        }
        if (ps->pos >= ps->len) {
            json_fail(ps, start, "unterminated string");
            return false;
        }
        unsigned char c = (unsigned char)ps->p[ps->pos];
        if (c == '"') {
            ps->pos++;
            return true;
        }
        if (c < 0x20) {
            json_fail(ps, ps->pos, "control character 0x%02x in string", c);
            return false;
        }
        if (c >= 0x80) {
            uint32_t cp;
            size_t n = json_utf8_decode((const unsigned char *)ps->p + ps->pos,
                                        ps->len - ps->pos, &cp);
            if (!n) {
                json_fail(ps, ps->pos, "invalid UTF-8 in string");
                return false;
            }
            strbuf_add(b, ps->p + ps->pos, n);
            ps->pos += n;
            continue;
        }
        /* backslash */
        size_t esc = ps->pos;
        if (ps->pos + 1 >= ps->len) {
            json_fail(ps, esc, "unterminated string");
            return false;
        }
        char e = ps->p[ps->pos + 1];
        ps->pos += 2;
        switch (e) {
        case '"': strbuf_putc(b, '"'); break;
        case '\\': strbuf_putc(b, '\\'); break;
        case '/': strbuf_putc(b, '/'); break;
        case 'b': strbuf_putc(b, '\b'); break;
        case 'f': strbuf_putc(b, '\f'); break;
        case 'n': strbuf_putc(b, '\n'); break;
        case 'r': strbuf_putc(b, '\r'); break;
        case 't': strbuf_putc(b, '\t'); break;
        case 'u': {
            uint32_t cp;
            if (json_hex4(ps, ps->pos, &cp) < 0) {
                json_fail(ps, esc, "invalid \\u escape");
                return false;
            }
            ps->pos += 4;
            if (cp == 0) {
                /* strings are C strings everywhere they are used: a NUL
                 * would silently cut "x\u0000y" to "x" */
                json_fail(ps, esc, "\\u0000 is not supported");
                return false;
            }
            if (cp >= 0xdc00 && cp <= 0xdfff) {
                json_fail(ps, esc, "lone low surrogate \\u%04X", (unsigned)cp);
                return false;
            }
            if (cp >= 0xd800 && cp <= 0xdbff) {
                uint32_t lo;
                if (ps->len - ps->pos < 6 || ps->p[ps->pos] != '\\' ||
                    ps->p[ps->pos + 1] != 'u' || json_hex4(ps, ps->pos + 2, &lo) < 0 ||
                    lo < 0xdc00 || lo > 0xdfff) {
                    json_fail(ps, esc, "high surrogate \\u%04X not followed by a low surrogate",
                              (unsigned)cp);
                    return false;
                }
                ps->pos += 6;
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            }
            json_put_utf8(b, cp);
            break;
        }
        default:
            if ((unsigned char)e >= 0x20 && (unsigned char)e < 0x7f) {
                json_fail(ps, esc, "invalid escape '\\%c'", e);
            } else {
                json_fail(ps, esc, "invalid escape");
            }
            return false;
        }
    }
}

static VdJson *json_parse_number(JsonParser *ps)
{
    size_t start = ps->pos;
    size_t i = ps->pos;
    bool is_int = true;
    if (i < ps->len && ps->p[i] == '-') {
        i++;
    }
    if (i >= ps->len || ps->p[i] < '0' || ps->p[i] > '9') {
        json_fail(ps, start, "invalid number");
        return NULL;
    }
    if (ps->p[i] == '0') {
        i++;
        if (i < ps->len && ps->p[i] >= '0' && ps->p[i] <= '9') {
            json_fail(ps, start, "leading zero in number");
            return NULL;
        }
    } else {
        while (i < ps->len && ps->p[i] >= '0' && ps->p[i] <= '9') {
            i++;
        }
    }
    if (i < ps->len && ps->p[i] == '.') {
        is_int = false;
        i++;
        if (i >= ps->len || ps->p[i] < '0' || ps->p[i] > '9') {
            json_fail(ps, start, "digit expected after '.' in number");
            return NULL;
        }
        while (i < ps->len && ps->p[i] >= '0' && ps->p[i] <= '9') {
            i++;
        }
    }
    if (i < ps->len && (ps->p[i] == 'e' || ps->p[i] == 'E')) {
        is_int = false;
        i++;
        if (i < ps->len && (ps->p[i] == '+' || ps->p[i] == '-')) {
            i++;
        }
        if (i >= ps->len || ps->p[i] < '0' || ps->p[i] > '9') {
            json_fail(ps, start, "digit expected in exponent");
            return NULL;
        }
        while (i < ps->len && ps->p[i] >= '0' && ps->p[i] <= '9') {
            i++;
        }
    }
    ps->pos = i;

    if (is_int) {
        bool neg = ps->p[start] == '-';
        uint64_t v = 0;
        bool overflow = false;
        for (size_t k = start + neg; k < i; k++) {
            unsigned d = (unsigned)(ps->p[k] - '0');
            if (v > (UINT64_MAX - d) / 10) {
                overflow = true;
                break;
            }
            v = v * 10 + d;
        }
        if (!overflow) {
            if (!neg) {
                return vd_json_uint(v);
            }
            if (v <= (uint64_t)INT64_MAX + 1) {
                return vd_json_int(v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v);
            }
        }
        /* Too large for 64 bits: fall through to a double. */
    }

    size_t n = i - start;
    char small[64];
    char *tmp = n < sizeof(small) ? small : json_xmalloc(n + 1);
    memcpy(tmp, ps->p + start, n);
    tmp[n] = '\0';
    double d = strbuf_strtod_c(tmp);
    if (tmp != small) {
        free(tmp);
    }
    if (!isfinite(d)) {
        json_fail(ps, start, "number out of range");
        return NULL;
    }
    return vd_json_double(d);
}

static bool json_literal(JsonParser *ps, const char *word)
{
    size_t n = strlen(word);
    if (ps->len - ps->pos >= n && !memcmp(ps->p + ps->pos, word, n)) {
        ps->pos += n;
        return true;
    }
    return false;
}

static VdJson *json_parse_value(JsonParser *ps, int depth);

/* At the opening bracket of an array or object: skip it and the spaces after
 * it; true if the closing bracket follows at once (skipped too). */
static bool json_open_empty(JsonParser *ps, char close)
{
    ps->pos++;
    json_skip_ws(ps);
    if (json_peek(ps) == close) {
        ps->pos++;
        return true;
    }
    return false;
}

/* After an item of an array or object: 1 if a ',' follows (skipped, with the
 * spaces after it), 0 if the closing bracket does (skipped), -1 on an error. */
static int json_after_item(JsonParser *ps, char close)
{
    json_skip_ws(ps);
    int c = json_peek(ps);
    if (c == ',') {
        ps->pos++;
        json_skip_ws(ps);
        return 1;
    }
    if (c == close) {
        ps->pos++;
        return 0;
    }
    char d[16];
    json_fail(ps, ps->pos, "expected ',' or '%c' but found %s", close,
              json_describe(ps, d, sizeof(d)));
    return -1;
}

static VdJson *json_parse_array(JsonParser *ps, int depth)
{
    VdJson *a = vd_json_array();
    if (json_open_empty(ps, ']')) {
        return a;
    }
    for (;;) {
        VdJson *v = json_parse_value(ps, depth);
        if (!v) {
            break;
        }
        vd_json_array_append(a, v);
        int r = json_after_item(ps, ']');
        if (r == 0) {
            return a;
        }
        if (r < 0) {
            break;
        }
    }
    vd_json_unref(a);
    return NULL;
}

static VdJson *json_parse_object(JsonParser *ps, int depth)
{
    VdJson *o = vd_json_object();
    StrBuf key = { 0 };
    char d[16];
    if (json_open_empty(ps, '}')) {
        return o;
    }
    for (;;) {
        if (json_peek(ps) != '"') {
            json_fail(ps, ps->pos, "expected string key but found %s",
                      json_describe(ps, d, sizeof(d)));
            goto fail;
        }
        size_t key_at = ps->pos;
        key.len = 0;
        strbuf_reserve(&key, 0);
        key.s[0] = '\0';
        if (!json_parse_string_into(ps, &key)) {
            goto fail;
        }
        if (strlen(key.s) != key.len) {
            json_fail(ps, key_at, "object key contains a NUL character");
            goto fail;
        }
        if (json_object_find(o, key.s) >= 0) {
            json_fail(ps, key_at, "duplicate key '%.64s'", key.s);
            goto fail;
        }
        json_skip_ws(ps);
        if (json_peek(ps) != ':') {
            json_fail(ps, ps->pos, "expected ':' but found %s", json_describe(ps, d, sizeof(d)));
            goto fail;
        }
        ps->pos++;
        json_skip_ws(ps);
        VdJson *v = json_parse_value(ps, depth);
        if (!v) {
            goto fail;
        }
        vd_json_object_put(o, key.s, v);
        int r = json_after_item(ps, '}');
        if (r == 0) {
            free(key.s);
            return o;
        }
        if (r < 0) {
            goto fail;
        }
    }
fail:
    free(key.s);
    vd_json_unref(o);
    return NULL;
}

/* depth: number of containers around this value. */
static VdJson *json_parse_value(JsonParser *ps, int depth)
{
    char d[16];
    int c = json_peek(ps);
    switch (c) {
    case '{':
    case '[':
        if (depth >= VD_JSON_MAX_DEPTH) {
            json_fail(ps, ps->pos, "nesting deeper than %d", VD_JSON_MAX_DEPTH);
            return NULL;
        }
        return c == '{' ? json_parse_object(ps, depth + 1) : json_parse_array(ps, depth + 1);
    case '"': {
        StrBuf b = { 0 };
        strbuf_reserve(&b, 0);
        b.s[0] = '\0';
        if (!json_parse_string_into(ps, &b)) {
            free(b.s);
            return NULL;
        }
        VdJson *v = json_new(VD_JSON_STRING);
        v->u.str.len = b.len;
        v->u.str.s = strbuf_finish(&b);
        return v;
    }
    case 't':
        if (json_literal(ps, "true")) {
            return vd_json_bool(true);
        }
        break;
    case 'f':
        if (json_literal(ps, "false")) {
            return vd_json_bool(false);
        }
        break;
    case 'n':
        if (json_literal(ps, "null")) {
            return vd_json_null();
        }
        break;
    case -1:
        json_fail(ps, ps->pos, "unexpected end of input");
        return NULL;
    default:
        if (c == '-' || (c >= '0' && c <= '9')) {
            return json_parse_number(ps);
        }
        break;
    }
    json_fail(ps, ps->pos, "unexpected %s", json_describe(ps, d, sizeof(d)));
    return NULL;
}

VdJson *vd_json_parse(const char *text, size_t len, VdError **errp)
{
    JsonParser ps = { .p = text ? text : "", .len = text ? len : 0, .errp = errp };
    json_skip_ws(&ps);
    VdJson *v = json_parse_value(&ps, 0);
    if (!v) {
        return NULL;
    }
    json_skip_ws(&ps);
    if (ps.pos != ps.len) {
        char d[16];
        json_fail(&ps, ps.pos, "trailing %s after the value", json_describe(&ps, d, sizeof(d)));
        vd_json_unref(v);
        return NULL;
    }
    json_mark_typed(v, true);
    return v;
}

/* ---- generator ---- */

/*
 * Strings are escaped as qemu-img does: the two-character escapes for
 * '"', '\\', \b \f \n \r \t; \uXXXX (upper-case hex) for other control
 * characters and every non-ASCII code point (surrogate pairs above the BMP);
 * invalid UTF-8 becomes \uFFFD.
 */
static void json_gen_string(StrBuf *b, const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    strbuf_putc(b, '"');
    while (i < len) {
        size_t run = i;
        while (run < len && p[run] >= 0x20 && p[run] < 0x7f && p[run] != '"' && p[run] != '\\') {
            run++;
        }
        if (run > i) {
            strbuf_add(b, s + i, run - i);
            i = run;
            continue;
        }
        unsigned char c = p[i];
        switch (c) {
        case '"': strbuf_puts(b, "\\\""); i++; continue;
        case '\\': strbuf_puts(b, "\\\\"); i++; continue;
        case '\b': strbuf_puts(b, "\\b"); i++; continue;
        case '\f': strbuf_puts(b, "\\f"); i++; continue;
        case '\n': strbuf_puts(b, "\\n"); i++; continue;
        case '\r': strbuf_puts(b, "\\r"); i++; continue;
        case '\t': strbuf_puts(b, "\\t"); i++; continue;
        default:
            break;
        }
        uint32_t cp;
        size_t n = json_utf8_decode(p + i, len - i, &cp);
        if (!n) {
            cp = 0xfffd;
            n = 1;
        }
        i += n;
        if (cp > 0xffff) {
            strbuf_printf(b, "\\u%04X\\u%04X", (unsigned)(0xd800 + ((cp - 0x10000) >> 10)),
                          (unsigned)(0xdc00 + ((cp - 0x10000) & 0x3ff)));
        } else {
            strbuf_printf(b, "\\u%04X", (unsigned)cp);
        }
    }
    strbuf_putc(b, '"');
}

/* Shortest representation that reads back to the same double, always with
 * a '.' or exponent so it parses back as a double. Non-finite values are
 * not JSON: they are written as null. */
static void json_gen_double(StrBuf *b, double d)
{
    if (!isfinite(d)) {
        strbuf_puts(b, "null");
        return;
    }
    char buf[40];
    for (int prec = 15; prec <= 17; prec++) {
        strbuf_format_double_c(buf, sizeof(buf), prec, d);
        if (strbuf_strtod_c(buf) == d) {
            break;
        }
    }
    strbuf_puts(b, buf);
    if (!strpbrk(buf, ".eE")) {
        strbuf_puts(b, ".0");
    }
}

static void json_newline(StrBuf *b, bool pretty, int level)
{
    if (pretty) {
        strbuf_putc(b, '\n');
        strbuf_pad(b, ' ', (size_t)level * 4);
    }
}

/*
 * Layout of the pretty form (qemu-img's): every member or element on its
 * own line indented 4 spaces per level, "key": value, and the closing
 * bracket on its own line at the container's level -- also for empty
 * containers ("[\n    ]" one level down).
 */
static void json_gen(StrBuf *b, const VdJson *v, bool pretty, int level)
{
    switch (v->type) {
    case VD_JSON_NULL:
        strbuf_puts(b, "null");
        break;
    case VD_JSON_BOOL:
        strbuf_puts(b, v->u.b ? "true" : "false");
        break;
    case VD_JSON_INT:
        strbuf_printf(b, "%lld", (long long)v->u.i);
        break;
    case VD_JSON_UINT:
        strbuf_printf(b, "%llu", (unsigned long long)v->u.u);
        break;
    case VD_JSON_DOUBLE:
        json_gen_double(b, v->u.d);
        break;
    case VD_JSON_STRING:
        json_gen_string(b, v->u.str.s, v->u.str.len);
        break;
    case VD_JSON_ARRAY:
        strbuf_putc(b, '[');
        for (size_t i = 0; i < v->u.arr.n; i++) {
            if (i) {
                strbuf_putc(b, ',');
            }
            json_newline(b, pretty, level + 1);
            json_gen(b, v->u.arr.items[i], pretty, level + 1);
        }
        json_newline(b, pretty, level);
        strbuf_putc(b, ']');
        break;
    case VD_JSON_OBJECT:
        strbuf_putc(b, '{');
        for (size_t i = 0; i < v->u.obj.n; i++) {
            if (i) {
                strbuf_putc(b, ',');
            }
            json_newline(b, pretty, level + 1);
            json_gen_string(b, v->u.obj.keys[i], strlen(v->u.obj.keys[i]));
            strbuf_puts(b, pretty ? ": " : ":");
            json_gen(b, v->u.obj.vals[i], pretty, level + 1);
        }
        json_newline(b, pretty, level);
        strbuf_putc(b, '}');
        break;
    }
}

char *vd_json_to_string(const VdJson *v, bool pretty)
{
    StrBuf b = { 0 };
    if (!v) {
        strbuf_puts(&b, "null");
    } else {
        json_gen(&b, v, pretty, 0);
    }
    return strbuf_finish(&b);
}

/* ---- stream splitter ---- */

#define JSON_STREAM_DEFAULT_MAX (16u << 20)

typedef enum {
    STREAM_IDLE,       /* between values, skipping white space */
    STREAM_CONTAINER,  /* inside an object or array */
    STREAM_STRING,     /* inside a top-level string or a string in a container */
    STREAM_SCALAR,     /* a bare number or literal at top level */
    STREAM_RESYNC,     /* after an error: drop bytes until the next '{' */
} StreamState;

struct VdJsonStream {
    VdJsonStreamCb *cb;
    void *opaque;
    size_t max_bytes;
    StreamState state;
    bool in_string;        /* inside a string within a container */
    bool escape;           /* previous byte was a backslash inside a string */
    int depth;
    char stack[VD_JSON_MAX_DEPTH + 1];   /* open brackets */
    StrBuf buf;            /* bytes of the value being collected */
    size_t offset;         /* stream offset of the first byte in buf */
    size_t consumed;       /* total bytes fed so far */
};

VdJsonStream *vd_json_stream_new(VdJsonStreamCb *cb, void *opaque, size_t max_value_bytes)
{
    VdJsonStream *s = calloc(1, sizeof(*s));
    if (!s) {
        abort();
    }
    s->cb = cb;
    s->opaque = opaque;
    s->max_bytes = max_value_bytes ? max_value_bytes : JSON_STREAM_DEFAULT_MAX;
    s->state = STREAM_IDLE;
    return s;
}

void vd_json_stream_free(VdJsonStream *s)
{
    if (s) {
        free(s->buf.s);
        free(s);
    }
}

static void stream_reset_value(VdJsonStream *s)
{
    s->buf.len = 0;
    s->depth = 0;
    s->in_string = false;
    s->escape = false;
}

VD_PRINTF(3, 4) static void stream_error(VdJsonStream *s, size_t at, const char *fmt, ...)
{
    VdError *err = NULL;
    char msg[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    vd_error_setg(&err, EINVAL, "JSON parse error at offset %zu: %s", at, msg);
    stream_reset_value(s);
    s->state = STREAM_RESYNC;
    s->cb(s->opaque, NULL, err);
}

/* The collected bytes form one complete value: parse and deliver it. */
static void stream_emit(VdJsonStream *s)
{
    VdError *err = NULL;
    VdJson *v = vd_json_parse(s->buf.s, s->buf.len, &err);
    size_t start = s->offset;
    stream_reset_value(s);
    if (v) {
        s->state = STREAM_IDLE;
        s->cb(s->opaque, v, NULL);
    } else {
        /* Offsets in stream terms: prefix the value's start. */
        vd_error_prepend(&err, "value at stream offset %zu: ", start);
        s->state = STREAM_RESYNC;
        s->cb(s->opaque, NULL, err);
    }
}

static bool stream_is_delimiter(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '{' || c == '}' ||
           c == '[' || c == ']' || c == ',' || c == ':' || c == '"';
}

void vd_json_stream_feed(VdJsonStream *s, const char *data, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        char c = data[i];
        size_t at = s->consumed++;

        switch (s->state) {
        case STREAM_RESYNC:
            if (c != '{') {
                continue;
            }
            /* a new object starts here */
            __attribute__((fallthrough));
        case STREAM_IDLE:
            if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
                continue;
            }
            stream_reset_value(s);
            s->offset = at;
            if (c == '{' || c == '[') {
                s->state = STREAM_CONTAINER;
                s->stack[s->depth++] = c;
            } else if (c == '"') {
                s->state = STREAM_STRING;
            } else if (c == '}' || c == ']' || c == ',' || c == ':') {
                stream_error(s, at, "unexpected '%c'", c);
                continue;
            } else {
                s->state = STREAM_SCALAR;
            }
            strbuf_putc(&s->buf, c);
            continue;
        case STREAM_SCALAR:
            if (stream_is_delimiter(c)) {
                stream_emit(s);
                /* Re-examine this byte as the start of what follows. */
                s->consumed--;
                i--;
                continue;
            }
            break;
        case STREAM_STRING:
            if (s->escape) {
                s->escape = false;
            } else if (c == '\\') {
                s->escape = true;
            } else if (c == '"') {
                strbuf_putc(&s->buf, c);
                stream_emit(s);
                continue;
            }
            break;
        case STREAM_CONTAINER:
            if (s->in_string) {
                if (s->escape) {
                    s->escape = false;
                } else if (c == '\\') {
                    s->escape = true;
                } else if (c == '"') {
                    s->in_string = false;
                }
            } else if (c == '"') {
                s->in_string = true;
            } else if (c == '{' || c == '[') {
                if (s->depth >= VD_JSON_MAX_DEPTH) {
                    stream_error(s, at, "nesting deeper than %d", VD_JSON_MAX_DEPTH);
                    continue;
                }
                s->stack[s->depth++] = c;
            } else if (c == '}' || c == ']') {
                char open = s->stack[s->depth - 1];
                if ((c == '}') != (open == '{')) {
                    stream_error(s, at, "'%c' does not match '%c'", c, open);
                    continue;
                }
                if (--s->depth == 0) {
                    strbuf_putc(&s->buf, c);
                    stream_emit(s);
                    continue;
                }
            }
            break;
        }
        if (s->buf.len >= s->max_bytes) {
            stream_error(s, s->offset, "value longer than %zu bytes", s->max_bytes);
            continue;
        }
        strbuf_putc(&s->buf, c);
    }
}
