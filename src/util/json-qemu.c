/*
 * JSON the way QEMU's tools print it: objects in QEMU's hash-table key order
 * (so --output=json matches qemu-img byte for byte) and the one-line form
 * of json: filenames.
 */
#include <inttypes.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "vdisk/json.h"
#include "strbuf.h"

/* QEMU prints dictionaries in the iteration order of its hash table: buckets
 * in increasing order (hash % 512), newest entry first within a bucket. */
static unsigned qemu_dict_bucket(const char *key)
{
    uint32_t v = 0x238F13AFu * (uint32_t)strlen(key);
    for (unsigned i = 0; key[i]; i++) {
        v += (uint32_t)(unsigned char)key[i] << (i * 5 % 24);
    }
    return (1103515243u * v + 12345u) % 512;
}

typedef struct QemuOrderEntry {
    char *key;
    VdJson *value;
    unsigned bucket;
    size_t index;
} QemuOrderEntry;

static int qemu_order_cmp(const void *a, const void *b)
{
    const QemuOrderEntry *x = a, *y = b;
    if (x->bucket != y->bucket) {
        return x->bucket < y->bucket ? -1 : 1;
    }
    return x->index > y->index ? -1 : 1;     /* later insertion first */
}

void vd_json_qemu_order(VdJson *v)
{
    if (!v) {
        return;
    }
    if (vd_json_type(v) == VD_JSON_ARRAY) {
        for (size_t i = 0; i < vd_json_array_size(v); i++) {
            vd_json_qemu_order(vd_json_array_get(v, i));
        }
        return;
    }
    if (vd_json_type(v) != VD_JSON_OBJECT) {
        return;
    }
    size_t n = vd_json_object_size(v);
    QemuOrderEntry *e = calloc(n ? n : 1, sizeof(*e));
    if (!e) {
        return;
    }
    for (size_t i = 0; i < n; i++) {
        VdJson *val;
        const char *k = vd_json_object_entry(v, i, &val);
        e[i].key = strdup(k);
        e[i].value = vd_json_ref(val);
        e[i].bucket = qemu_dict_bucket(k);
        e[i].index = i;
        vd_json_qemu_order(val);
    }
    qsort(e, n, sizeof(*e), qemu_order_cmp);
    for (size_t i = 0; i < n; i++) {
        vd_json_object_del(v, e[i].key);
    }
    for (size_t i = 0; i < n; i++) {
        vd_json_object_put(v, e[i].key, e[i].value);
        free(e[i].key);
    }
    free(e);
}

static void qj_string(StrBuf *b, const char *s)
{
    strbuf_puts(b, "\"");
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char esc[8];
        switch (c) {
        case '"': strbuf_puts(b, "\\\""); break;
        case '\\': strbuf_puts(b, "\\\\"); break;
        case '\n': strbuf_puts(b, "\\n"); break;
        case '\t': strbuf_puts(b, "\\t"); break;
        case '\r': strbuf_puts(b, "\\r"); break;
        case '\b': strbuf_puts(b, "\\b"); break;
        case '\f': strbuf_puts(b, "\\f"); break;
        default:
            if (c < 0x20 || c == 0x7f) {
                snprintf(esc, sizeof(esc), "\\u%04x", c);
                strbuf_puts(b, esc);
            } else {
                strbuf_add(b, (const char *)&c, 1);
            }
        }
    }
    strbuf_puts(b, "\"");
}

static void qj_gen(StrBuf *b, const VdJson *v)
{
    char num[64];
    switch (vd_json_type(v)) {
    case VD_JSON_NULL:
        strbuf_puts(b, "null");
        break;
    case VD_JSON_BOOL:
        strbuf_puts(b, vd_json_get_bool(v) ? "true" : "false");
        break;
    case VD_JSON_INT:
        snprintf(num, sizeof(num), "%" PRId64, vd_json_get_int(v));
        strbuf_puts(b, num);
        break;
    case VD_JSON_UINT:
        snprintf(num, sizeof(num), "%" PRIu64, vd_json_get_uint(v));
        strbuf_puts(b, num);
        break;
    case VD_JSON_DOUBLE:
        snprintf(num, sizeof(num), "%.17g", vd_json_get_double(v));
        strbuf_puts(b, num);
        break;
    case VD_JSON_STRING:
        qj_string(b, vd_json_get_string(v));
        break;
    case VD_JSON_ARRAY:
        strbuf_puts(b, "[");
        for (size_t i = 0; i < vd_json_array_size(v); i++) {
            if (i) {
                strbuf_puts(b, ", ");
            }
            qj_gen(b, vd_json_array_get(v, i));
        }
        strbuf_puts(b, "]");
        break;
    case VD_JSON_OBJECT:
        strbuf_puts(b, "{");
        for (size_t i = 0; i < vd_json_object_size(v); i++) {
            VdJson *val;
            const char *k = vd_json_object_entry(v, i, &val);
            if (i) {
                strbuf_puts(b, ", ");
            }
            qj_string(b, k);
            strbuf_puts(b, ": ");
            qj_gen(b, val);
        }
        strbuf_puts(b, "}");
        break;
    }
}

char *vd_json_to_qemu_string(const VdJson *v)
{
    StrBuf b = { 0 };
    if (v) {
        qj_gen(&b, v);
    } else {
        strbuf_puts(&b, "null");
    }
    return strbuf_finish(&b);
}
