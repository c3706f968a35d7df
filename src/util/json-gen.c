/*
 * JSON out: the compact and qemu-img "pretty" generators (qemu-img's
 * escapes), and the incremental stream splitter the monitor reads with.
 */
#include "json-int.h"

/* ---- generator ---- */

/*
 * Strings are escaped as qemu-img does: the two-character escapes for
 * '"', '\\', \b \f \n \r \t; a \u escape (four upper-case hex digits)
 * for other control characters and every non-ASCII code point (surrogate
 * pairs above the BMP); invalid UTF-8 becomes \uFFFD.
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
