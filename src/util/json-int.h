/*
 * The JSON value's layout and the helpers its files share: json.c (values,
 * arrays, objects), json-parse.c (the parser), json-gen.c (generators and
 * the stream splitter). Private to src/util.
 */
#ifndef VDISK_UTIL_JSON_INT_H
#define VDISK_UTIL_JSON_INT_H

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

void json_mark_typed(VdJson *v, bool typed);
VdJson *json_new(VdJsonType type);
ssize_t json_object_find(const VdJson *o, const char *key);
size_t json_utf8_decode(const unsigned char *s, size_t avail, uint32_t *cp);
void *json_xmalloc(size_t n);

#endif
