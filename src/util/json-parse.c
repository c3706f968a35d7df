/*
 * A strict RFC 8259 JSON parser with bounded depth: scalars it reads are
 * typed (no conversion in option getters), \u0000 is refused, errors say
 * where.
 */
#include "json-int.h"

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
size_t json_utf8_decode(const unsigned char *s, size_t avail, uint32_t *cp)
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
