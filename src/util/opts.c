/*
 * Option trees: the "a=b,c.d=e" key=value syntax (",," escapes a comma),
 * json:{...} strings, typed getters that consume keys so leftovers can be
 * reported, and qemu-img compatible size / number / bool parsing.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE   /* vasprintf, strndup */
#endif
#include <assert.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "vdisk/opts.h"
#include "strbuf.h"

/* Longest dotted key accepted in a key=value string. */
#define OPTS_MAX_KEY 256

/* ---- scalar parsing ---- */

static int opts_digit(char c, int base)
{
    int d;
    if (c >= '0' && c <= '9') {
        d = c - '0';
    } else if (c >= 'a' && c <= 'f') {
        d = c - 'a' + 10;
    } else if (c >= 'A' && c <= 'F') {
        d = c - 'A' + 10;
    } else {
        return -1;
    }
    return d < base ? d : -1;
}

/* Parse digits at *p in base; at least one digit. Advances *p. */
static int opts_parse_digits(const char **p, int base, uint64_t *out)
{
    const char *s = *p;
    uint64_t v = 0;
    bool overflow = false;
    int d;
    if (opts_digit(*s, base) < 0) {
        return -EINVAL;
    }
    while ((d = opts_digit(*s, base)) >= 0) {
        if (v > (UINT64_MAX - (uint64_t)d) / (uint64_t)base) {
            overflow = true;
        } else {
            v = v * (uint64_t)base + (uint64_t)d;
        }
        s++;
    }
    *p = s;
    *out = v;
    return overflow ? -ERANGE : 0;
}

int vd_parse_uint(const char *str, uint64_t *out)
{
    if (!str) {
        return -EINVAL;
    }
    const char *p = str;
    int base = 10;
    if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
        base = 16;
        p += 2;
    }
    uint64_t v;
    int ret = opts_parse_digits(&p, base, &v);
    if (ret == -EINVAL || *p != '\0') {
        return -EINVAL;
    }
    if (ret < 0) {
        return ret;
    }
    *out = v;
    return 0;
}

int vd_parse_int(const char *str, int64_t *out)
{
    if (!str) {
        return -EINVAL;
    }
    bool neg = str[0] == '-';
    uint64_t v;
    int ret = vd_parse_uint(str + neg, &v);
    if (ret < 0) {
        return ret;
    }
    if (neg) {
        if (v > (uint64_t)INT64_MAX + 1) {
            return -ERANGE;
        }
        *out = v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v;
    } else {
        if (v > INT64_MAX) {
            return -ERANGE;
        }
        *out = (int64_t)v;
    }
    return 0;
}

int vd_parse_bool(const char *str, bool *out)
{
    static const char *const yes[] = { "on", "yes", "true", "y", NULL };
    static const char *const no[] = { "off", "no", "false", "n", NULL };
    if (!str) {
        return -EINVAL;
    }
    for (int i = 0; yes[i]; i++) {
        if (!strcmp(str, yes[i])) {
            *out = true;
            return 0;
        }
        if (!strcmp(str, no[i])) {
            *out = false;
            return 0;
        }
    }
    return -EINVAL;
}

/* Multiplier of a size suffix (any case), or 0 if c is not one. */
static uint64_t opts_suffix_mul(char c)
{
    switch (c) {
    case 'b': case 'B': return 1;
    case 'k': case 'K': return 1ULL << 10;
    case 'm': case 'M': return 1ULL << 20;
    case 'g': case 'G': return 1ULL << 30;
    case 't': case 'T': return 1ULL << 40;
    case 'p': case 'P': return 1ULL << 50;
    case 'e': case 'E': return 1ULL << 60;
    default: return 0;
    }
}

/*
 * Sizes as qemu-img reads them: leading white space, a decimal integer
 * part, an optional ".fraction" (then a suffix other than B is required
 * unless the fraction is zero), or a 0x hex integer (no fraction); then an
 * optional suffix b/k/m/g/t/p/e in either case, binary units. Negative
 * numbers, exponents and trailing garbage are -EINVAL; results above
 * UINT64_MAX are -ERANGE. The fraction is rounded to the nearest byte.
 */
int vd_parse_size(const char *str, uint64_t *out)
{
    if (!str) {
        return -EINVAL;
    }
    const char *p = str;
    while (*p == ' ' || *p == '\t' || *p == '\n') {
        p++;
    }
    uint64_t val, valf = 0;
    bool hex = false;
    int ret;
    if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
        p += 2;
        hex = true;
        ret = opts_parse_digits(&p, 16, &val);
    } else {
        ret = opts_parse_digits(&p, 10, &val);
    }
    if (ret == -EINVAL) {
        return -EINVAL;
    }
    bool overflow = ret == -ERANGE;
    if (*p == '.') {
        if (hex) {
            return -EINVAL;
        }
        p++;
        /* 64-bit binary fixed-point fraction from the decimal digits. */
        const char *f = p;
        while (*p >= '0' && *p <= '9') {
            p++;
        }
        if (p > f) {
            size_t n = (size_t)(p - f);
            char tmp[48] = "0.";
            if (n > sizeof(tmp) - 3) {
                n = sizeof(tmp) - 3;
            }
            memcpy(tmp + 2, f, n);
            tmp[2 + n] = '\0';
            double fraction = strbuf_strtod_c(tmp);
            if (fraction >= 1.0) {
                valf = UINT64_MAX;
            } else {
                valf = (uint64_t)ldexp(fraction, 64);
                if (valf == 0 && fraction > 0) {
                    valf = 1;
                }
            }
        }
    }
    uint64_t mul = opts_suffix_mul(*p);
    if (mul) {
        p++;
    } else {
        mul = 1;
    }
    if (*p != '\0') {
        return -EINVAL;
    }
    if (mul == 1 && valf != 0) {
        return -EINVAL;   /* a fraction of a byte */
    }
    if (overflow) {
        return -ERANGE;
    }
    unsigned __int128 whole = (unsigned __int128)val * mul;
    unsigned __int128 frac = (unsigned __int128)valf * mul;
    whole += (frac >> 64) + ((frac >> 63) & 1);   /* round half up */
    if (whole > UINT64_MAX) {
        return -ERANGE;
    }
    *out = (uint64_t)whole;
    return 0;
}

/* ---- tree helpers ---- */

/* Split the next fragment of a dotted key: returns its length. */
static size_t opts_fragment(const char *key)
{
    const char *dot = strchr(key, '.');
    return dot ? (size_t)(dot - key) : strlen(key);
}

/*
 * Set dotted key to value (taken) in opts, creating intermediate objects.
 * strict: fail with -EINVAL if a prefix of the key holds a non-object or the
 * key itself holds a non-empty object ("used inconsistently"); otherwise
 * such values are replaced. On failure value is freed and *bad_len says
 * how much of the key names the conflicting node.
 */
static int opts_set_path(VdJson *opts, const char *key, VdJson *value, bool strict, size_t *bad_len)
{
    VdJson *node = opts;
    const char *p = key;
    char frag[OPTS_MAX_KEY + 1];
    for (;;) {
        size_t n = opts_fragment(p);
        char *name = n < sizeof(frag) ? frag : malloc(n + 1);
        if (!name) {
            abort();
        }
        memcpy(name, p, n);
        name[n] = '\0';
        if (p[n] == '\0') {
            VdJson *old = vd_json_object_get(node, name);
            if (strict && old && vd_json_type(old) == VD_JSON_OBJECT &&
                vd_json_type(value) != VD_JSON_OBJECT) {
                if (name != frag) {
                    free(name);
                }
                *bad_len = (size_t)(p - key) + n;
                vd_json_unref(value);
                return -EINVAL;
            }
            vd_json_object_put(node, name, value);
            if (name != frag) {
                free(name);
            }
            return 0;
        }
        VdJson *child = vd_json_object_get(node, name);
        if (!child || vd_json_type(child) != VD_JSON_OBJECT) {
            if (child && strict) {
                if (name != frag) {
                    free(name);
                }
                *bad_len = (size_t)(p - key) + n;
                vd_json_unref(value);
                return -EINVAL;
            }
            child = vd_json_object();
            vd_json_object_put(node, name, child);
        }
        if (name != frag) {
            free(name);
        }
        node = child;
        p += n + 1;
    }
}

void vd_opts_set_json(VdOpts *opts, const char *dotted_key, VdJson *value)
{
    size_t bad;
    opts_set_path(opts, dotted_key, value ? value : vd_json_null(), false, &bad);
}

void vd_opts_set(VdOpts *opts, const char *dotted_key, const char *value)
{
    vd_opts_set_json(opts, dotted_key, vd_json_string(value));
}

/* Find the object holding the last fragment of key; *leaf gets that
 * fragment (malloc'ed). NULL if a prefix is missing or not an object. */
static VdJson *opts_parent(const VdJson *opts, const char *key, char **leaf)
{
    const VdJson *node = opts;
    const char *p = key;
    for (;;) {
        size_t n = opts_fragment(p);
        char *name = strndup(p, n);
        if (!name) {
            abort();
        }
        if (p[n] == '\0') {
            *leaf = name;
            return (VdJson *)node;
        }
        const VdJson *child = vd_json_object_get(node, name);
        free(name);
        if (!child || vd_json_type(child) != VD_JSON_OBJECT) {
            return NULL;
        }
        node = child;
        p += n + 1;
    }
}

VdJson *vd_opts_lookup(const VdOpts *opts, const char *dotted_key)
{
    if (!opts || !dotted_key || vd_json_type(opts) != VD_JSON_OBJECT) {
        return NULL;
    }
    char *leaf = NULL;
    VdJson *parent = opts_parent(opts, dotted_key, &leaf);
    VdJson *v = parent ? vd_json_object_get(parent, leaf) : NULL;
    free(leaf);
    return v;
}

/* Remove key from opts, returning its value (owned) or NULL; parents left
 * empty by the removal are removed too. */
static VdJson *opts_remove(VdOpts *opts, const char *key)
{
    if (!opts || !key || vd_json_type(opts) != VD_JSON_OBJECT) {
        return NULL;
    }
    char *leaf = NULL;
    VdJson *parent = opts_parent(opts, key, &leaf);
    VdJson *v = parent ? vd_json_object_get(parent, leaf) : NULL;
    if (v) {
        vd_json_ref(v);
        vd_json_object_del(parent, leaf);
        /* Prune: drop the longest prefixes that are now empty objects. */
        char *prefix = strdup(key);
        if (!prefix) {
            abort();
        }
        char *dot;
        while ((dot = strrchr(prefix, '.')) != NULL) {
            *dot = '\0';
            VdJson *node = vd_opts_lookup(opts, prefix);
            if (!node || vd_json_object_size(node) != 0) {
                break;
            }
            char *l2 = NULL;
            VdJson *pp = opts_parent(opts, prefix, &l2);
            if (pp) {
                vd_json_object_del(pp, l2);
            }
            free(l2);
        }
        free(prefix);
    }
    free(leaf);
    return v;
}

/* ---- key=value parsing ---- */

static bool opts_key_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '_';
}

/* A dotted key: fragments of [A-Za-z0-9_-]+ separated by single dots. */
static bool opts_key_valid(const char *key, size_t len)
{
    if (len == 0 || len > OPTS_MAX_KEY) {
        return false;
    }
    bool frag_empty = true;
    for (size_t i = 0; i < len; i++) {
        if (key[i] == '.') {
            if (frag_empty) {
                return false;
            }
            frag_empty = true;
        } else if (opts_key_char(key[i])) {
            frag_empty = false;
        } else {
            return false;
        }
    }
    return !frag_empty;
}

/* Read a value up to an unescaped ',' or the end; ",," is a literal comma. */
static const char *opts_read_value(const char *p, StrBuf *b)
{
    b->len = 0;
    strbuf_reserve(b, 0);
    b->s[0] = '\0';
    for (;;) {
        const char *comma = strchr(p, ',');
        if (!comma) {
            strbuf_puts(b, p);
            return p + strlen(p);
        }
        strbuf_add(b, p, (size_t)(comma - p));
        if (comma[1] == ',') {
            strbuf_putc(b, ',');
            p = comma + 2;
            continue;
        }
        return comma;
    }
}

/* Split keys containing '.' in a JSON-sourced tree into nested objects,
 * so "file.filename" and {"file": {"filename": ...}} mean the same. */
static int opts_normalize(VdJson *obj, int depth, VdError **errp)
{
    if (depth > VD_JSON_MAX_DEPTH) {
        vd_error_setg(errp, EINVAL, "Option tree nested too deeply");
        return -EINVAL;
    }
    /* Pass 1: move every dotted key of this level to its nested place. */
    size_t n = vd_json_object_size(obj);
    char **dotted = NULL;
    size_t ndotted = 0;
    for (size_t i = 0; i < n; i++) {
        const char *key = vd_json_object_entry(obj, i, NULL);
        if (strchr(key, '.')) {
            if (!dotted) {
                dotted = calloc(n, sizeof(char *));
                if (!dotted) {
                    abort();
                }
            }
            dotted[ndotted] = strdup(key);
            if (!dotted[ndotted]) {
                abort();
            }
            ndotted++;
        }
    }
    int ret = 0;
    for (size_t i = 0; i < ndotted; i++) {
        const char *k = dotted[i];
        if (ret == 0) {
            VdJson *v = vd_json_ref(vd_json_object_get(obj, k));
            vd_json_object_del(obj, k);
            size_t bad = 0;
            if (!opts_key_valid(k, strlen(k))) {
                vd_error_setg(errp, EINVAL, "Invalid parameter '%.256s'", k);
                vd_json_unref(v);
                ret = -EINVAL;
            } else if (opts_set_path(obj, k, v, true, &bad) < 0) {
                vd_error_setg(errp, EINVAL, "Parameter '%.256s' used inconsistently", k);
                ret = -EINVAL;
            }
        }
        free(dotted[i]);
    }
    free(dotted);
    if (ret < 0) {
        return ret;
    }
    /* Pass 2: the same below (moved subtrees included). */
    n = vd_json_object_size(obj);
    for (size_t i = 0; i < n; i++) {
        VdJson *v;
        vd_json_object_entry(obj, i, &v);
        if (vd_json_type(v) == VD_JSON_OBJECT && opts_normalize(v, depth + 1, errp) < 0) {
            return -EINVAL;
        }
    }
    return 0;
}

static VdOpts *opts_parse_json(const char *text, VdError **errp)
{
    VdError *err = NULL;
    VdJson *v = vd_json_parse(text, strlen(text), &err);
    if (!v) {
        vd_error_prepend(&err, "Invalid JSON option string: ");
        vd_error_propagate(errp, err);
        return NULL;
    }
    if (vd_json_type(v) != VD_JSON_OBJECT) {
        vd_error_setg(errp, EINVAL, "Invalid JSON option string: expected an object");
        vd_json_unref(v);
        return NULL;
    }
    if (opts_normalize(v, 0, errp) < 0) {
        vd_json_unref(v);
        return NULL;
    }
    return v;
}

VdOpts *vd_opts_parse(const char *str, const char *implied_key, VdError **errp)
{
    if (!str) {
        str = "";
    }
    if (str[0] == '{') {
        return opts_parse_json(str, errp);
    }
    if (!strncmp(str, "json:", 5)) {
        /* json: filenames are as lenient as key=value in QEMU ("size":"1M") */
        VdOpts *o = opts_parse_json(str + 5, errp);
        vd_json_set_untyped(o);
        return o;
    }

    VdOpts *opts = vd_json_object();
    StrBuf val = { 0 };
    const char *p = str;
    bool first = true;
    while (*p) {
        size_t klen = strcspn(p, "=,");
        if (p[klen] != '=') {
            /* No '=' in this element. */
            if (first && implied_key) {
                p = opts_read_value(p, &val);
                vd_opts_set(opts, implied_key, val.s);
                goto next;
            }
            vd_error_setg(errp, EINVAL, "Expected '=' after parameter '%.*s'", (int)VD_MIN(klen, 256),
                          p);
            goto fail;
        }
        if (!opts_key_valid(p, klen)) {
            vd_error_setg(errp, EINVAL, "Invalid parameter '%.*s'", (int)VD_MIN(klen, 256), p);
            goto fail;
        }
        char key[OPTS_MAX_KEY + 1];
        memcpy(key, p, klen);
        key[klen] = '\0';
        p = opts_read_value(p + klen + 1, &val);
        size_t bad = 0;
        if (opts_set_path(opts, key, vd_json_string(val.s), true, &bad) < 0) {
            vd_error_setg(errp, EINVAL, "Parameter '%.*s' used inconsistently", (int)bad, key);
            goto fail;
        }
next:
        first = false;
        if (*p == ',') {
            p++;
        }
    }
    free(val.s);
    return opts;

fail:
    free(val.s);
    vd_json_unref(opts);
    return NULL;
}

/* ---- typed getters ---- */

/* Text of a scalar for messages and string conversion (malloc'ed). */
static char *opts_scalar_text(const VdJson *v)
{
    switch (vd_json_type(v)) {
    case VD_JSON_STRING:
        return strdup(vd_json_get_string(v));
    case VD_JSON_BOOL:
        return strdup(vd_json_get_bool(v) ? "on" : "off");
    case VD_JSON_NULL:
        return strdup("null");
    default:
        return vd_json_to_string(v, false);
    }
}

VD_PRINTF(4, 5) static int opts_bad_value(VdError **errp, const char *key, const VdJson *v,
                                          const char *fmt, ...)
{
    char *text = opts_scalar_text(v);
    char *why = NULL;
    va_list ap;
    va_start(ap, fmt);
    if (vasprintf(&why, fmt, ap) < 0) {
        why = NULL;
    }
    va_end(ap);
    vd_error_setg(errp, EINVAL, "Parameter '%s': invalid value '%.200s'%s%s", key,
                  text ? text : "", why ? ": " : "", why ? why : "");
    free(text);
    free(why);
    return -EINVAL;
}

/* A value read from JSON text whose type is not the option's: QMP's message. */
static int opts_bad_type(VdError **errp, const char *key, const char *expected)
{
    vd_error_setg(errp, EINVAL, "Invalid parameter type for '%s', expected: %s", key, expected);
    return -EINVAL;
}

/* Converts an option's value v into *pout (arg: what the converter needs). */
typedef int OptsConvFunc(VdJson *v, const char *key, void *pout, const void *arg, VdError **errp);

/* Remove key from opts and convert its value into *pout; when it is absent,
 * *pout is a copy of the size bytes at def. 0 or -EINVAL with errp set. */
static int opts_take(VdOpts *opts, const char *key, OptsConvFunc *conv, void *pout,
                     const void *def, size_t size, const void *arg, VdError **errp)
{
    VdJson *v = opts_remove(opts, key);
    if (!v) {
        memcpy(pout, def, size);
        return 0;
    }
    int ret = conv(v, key, pout, arg, errp);
    vd_json_unref(v);
    return ret;
}

static int opts_conv_str(VdJson *v, const char *key, void *pout, const void *arg,
                         VdError **errp)
{
    char **out = pout;
    int ret = 0;
    if (vd_json_is_typed(v) && vd_json_type(v) != VD_JSON_STRING) {
        *out = NULL;
        return opts_bad_type(errp, key, "string");
    }
    switch (vd_json_type(v)) {
    case VD_JSON_STRING:
    case VD_JSON_BOOL:
    case VD_JSON_INT:
    case VD_JSON_UINT:
    case VD_JSON_DOUBLE:
        *out = opts_scalar_text(v);
        break;
    default:
        *out = NULL;   /* never leave the caller a stale pointer */
        ret = opts_bad_value(errp, key, v, "expected a string");
        break;
    }
    return ret;
}

int vd_opts_take_str(VdOpts *opts, const char *key, const char *def, char **out, VdError **errp)
{
    int ret = opts_take(opts, key, opts_conv_str, out, &(char *){ NULL }, sizeof(*out), NULL,
                        errp);
    if (ret == 0 && !*out && def) {
        *out = strdup(def);
    }
    return ret;
}

static int opts_conv_bool(VdJson *v, const char *key, void *pout, const void *arg,
                          VdError **errp)
{
    bool *out = pout;
    int ret = 0;
    bool b;
    if (vd_json_type(v) == VD_JSON_BOOL) {
        *out = vd_json_get_bool(v);
    } else if (vd_json_is_typed(v)) {
        ret = opts_bad_type(errp, key, "boolean");
    } else if (vd_json_type(v) == VD_JSON_STRING && vd_parse_bool(vd_json_get_string(v), &b) == 0) {
        *out = b;
    } else {
        ret = opts_bad_value(errp, key, v, "expected 'on' or 'off'");
    }
    return ret;
}

int vd_opts_take_bool(VdOpts *opts, const char *key, bool def, bool *out, VdError **errp)
{
    return opts_take(opts, key, opts_conv_bool, out, &def, sizeof(def), NULL, errp);
}

/* Integral double in [lo, hi]? */
static bool opts_double_integral(double d, double lo, double hi)
{
    return isfinite(d) && d == floor(d) && d >= lo && d < hi;
}

/* A JSON number that is a non-negative integer below 2^64: into *out. */
static bool opts_json_uint(const VdJson *v, uint64_t *out)
{
    VdJsonType t = vd_json_type(v);
    if (t == VD_JSON_UINT || (t == VD_JSON_INT && vd_json_get_int(v) >= 0) ||
        (t == VD_JSON_DOUBLE &&
         opts_double_integral(vd_json_get_double(v), 0, 18446744073709551616.0))) {
        *out = vd_json_get_uint(v);
        return true;
    }
    return false;
}

static int opts_conv_uint(VdJson *v, const char *key, void *pout, const void *arg,
                          VdError **errp)
{
    uint64_t *out = pout;
    int r = -EINVAL;
    if (opts_json_uint(v, out)) {
        return 0;
    }
    if (vd_json_is_typed(v) && vd_json_type(v) != VD_JSON_INT && vd_json_type(v) != VD_JSON_DOUBLE) {
        return opts_bad_type(errp, key, "integer");
    }
    if (vd_json_type(v) == VD_JSON_STRING) {
        uint64_t u;
        r = vd_parse_uint(vd_json_get_string(v), &u);
        if (r == 0) {
            *out = u;
            return 0;
        }
    }
    return opts_bad_value(errp, key, v, r == -ERANGE ? "number too large"
                                                     : "expected a non-negative integer");
}

int vd_opts_take_uint(VdOpts *opts, const char *key, uint64_t def, uint64_t *out, VdError **errp)
{
    return opts_take(opts, key, opts_conv_uint, out, &def, sizeof(def), NULL, errp);
}

static int opts_conv_int(VdJson *v, const char *key, void *pout, const void *arg,
                         VdError **errp)
{
    int64_t *out = pout;
    int ret = 0;
    int64_t i;
    switch (vd_json_type(v)) {
    case VD_JSON_INT:
        *out = vd_json_get_int(v);
        break;
    case VD_JSON_DOUBLE:
        if (opts_double_integral(vd_json_get_double(v), -9223372036854775808.0,
                                 9223372036854775808.0)) {
            *out = vd_json_get_int(v);
        } else {
            ret = opts_bad_value(errp, key, v, "expected an integer");
        }
        break;
    case VD_JSON_STRING: {
        if (vd_json_is_typed(v)) {
            ret = opts_bad_type(errp, key, "integer");
            break;
        }
        int r = vd_parse_int(vd_json_get_string(v), &i);
        if (r == 0) {
            *out = i;
        } else {
            ret = opts_bad_value(errp, key, v, r == -ERANGE ? "number out of range"
                                                            : "expected an integer");
        }
        break;
    }
    default:
        ret = opts_bad_value(errp, key, v, vd_json_type(v) == VD_JSON_UINT ? "number out of range"
                                                                            : "expected an integer");
        break;
    }
    return ret;
}

int vd_opts_take_int(VdOpts *opts, const char *key, int64_t def, int64_t *out, VdError **errp)
{
    return opts_take(opts, key, opts_conv_int, out, &def, sizeof(def), NULL, errp);
}

static int opts_conv_size(VdJson *v, const char *key, void *pout, const void *arg,
                          VdError **errp)
{
    uint64_t *out = pout;
    if (opts_json_uint(v, out)) {
        return 0;
    }
    if (vd_json_type(v) != VD_JSON_STRING) {
        return opts_bad_value(errp, key, v, "expected a size");
    }
    if (vd_json_is_typed(v)) {
        return opts_bad_type(errp, key, "integer");
    }
    uint64_t u;
    int r = vd_parse_size(vd_json_get_string(v), &u);
    if (r == 0) {
        *out = u;
        return 0;
    }
    if (r == -ERANGE) {
        return opts_bad_value(errp, key, v, "size too large");
    }
    return opts_bad_value(errp, key, v, "expected a size (you may use k, M, G, T, P or E suffixes "
                          "for kilobytes, megabytes, gigabytes, terabytes, petabytes and "
                          "exabytes)");
}

int vd_opts_take_size(VdOpts *opts, const char *key, uint64_t def, uint64_t *out, VdError **errp)
{
    return opts_take(opts, key, opts_conv_size, out, &def, sizeof(def), NULL, errp);
}

int vd_opts_get_size(const VdOpts *opts, const char *key, uint64_t def, uint64_t *out,
                     VdError **errp)
{
    VdJson *v = opts ? vd_opts_lookup(opts, key) : NULL;
    if (!v) {
        *out = def;
        return 0;
    }
    return opts_conv_size(v, key, out, NULL, errp);
}

static int opts_conv_enum(VdJson *v, const char *key, void *pout, const void *arg,
                          VdError **errp)
{
    int *out = pout;
    const char *const *names = arg;
    int ret = -EINVAL;
    const char *s = vd_json_get_string(v);
    for (int i = 0; s && names[i]; i++) {
        if (!strcmp(s, names[i])) {
            *out = i;
            ret = 0;
            break;
        }
    }
    if (ret < 0) {
        StrBuf list = { 0 };
        for (int i = 0; names[i]; i++) {
            strbuf_printf(&list, "%s'%s'", i ? ", " : "", names[i]);
        }
        char *l = strbuf_finish(&list);
        opts_bad_value(errp, key, v, "expected one of %s", l);
        free(l);
    }
    return ret;
}

int vd_opts_take_enum(VdOpts *opts, const char *key, const char *const *names, int def, int *out,
                      VdError **errp)
{
    return opts_take(opts, key, opts_conv_enum, out, &def, sizeof(def), names, errp);
}

VdOpts *vd_opts_take_sub(VdOpts *opts, const char *key)
{
    VdJson *v = vd_opts_lookup(opts, key);
    if (!v || vd_json_type(v) != VD_JSON_OBJECT) {
        return NULL;
    }
    return opts_remove(opts, key);
}

/* First leftover key in dotted form, appended to b. */
static void opts_first_key(const VdJson *o, StrBuf *b)
{
    VdJson *v;
    const char *k = vd_json_object_entry(o, 0, &v);
    if (b->len) {
        strbuf_putc(b, '.');
    }
    strbuf_puts(b, k);
    if (vd_json_type(v) == VD_JSON_OBJECT && vd_json_object_size(v) > 0) {
        opts_first_key(v, b);
    }
}

int vd_opts_check_empty(const VdOpts *opts, const char *what, VdError **errp)
{
    if (!opts || vd_json_object_size(opts) == 0) {
        return 0;
    }
    StrBuf b = { 0 };
    opts_first_key(opts, &b);
    char *k = strbuf_finish(&b);
    vd_error_setg(errp, EINVAL, "%s does not support the option '%s'", what ? what : "This node", k);
    free(k);
    return -EINVAL;
}

/* ---- back to a string ---- */

static void opts_flatten(const VdJson *v, StrBuf *prefix, StrBuf *out)
{
    size_t plen = prefix->len;
    if (vd_json_type(v) == VD_JSON_OBJECT || vd_json_type(v) == VD_JSON_ARRAY) {
        bool is_obj = vd_json_type(v) == VD_JSON_OBJECT;
        size_t n = is_obj ? vd_json_object_size(v) : vd_json_array_size(v);
        for (size_t i = 0; i < n; i++) {
            VdJson *child;
            prefix->len = plen;
            if (plen) {
                strbuf_putc(prefix, '.');
            }
            if (is_obj) {
                strbuf_puts(prefix, vd_json_object_entry(v, i, &child));
            } else {
                child = vd_json_array_get(v, i);
                strbuf_printf(prefix, "%zu", i);
            }
            opts_flatten(child, prefix, out);
        }
        prefix->len = plen;
        if (prefix->s) {
            prefix->s[plen] = '\0';
        }
        return;
    }
    if (out->len) {
        strbuf_putc(out, ',');
    }
    strbuf_add(out, prefix->s, prefix->len);
    strbuf_putc(out, '=');
    if (vd_json_type(v) == VD_JSON_NULL) {
        return;
    }
    char *text = opts_scalar_text(v);
    for (const char *c = text; c && *c; c++) {
        if (*c == ',') {
            strbuf_putc(out, ',');
        }
        strbuf_putc(out, *c);
    }
    free(text);
}

char *vd_opts_to_string(const VdOpts *opts)
{
    StrBuf prefix = { 0 };
    StrBuf out = { 0 };
    if (opts) {
        opts_flatten(opts, &prefix, &out);
    }
    free(prefix.s);
    return strbuf_finish(&out);
}
