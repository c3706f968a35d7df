/*
 * Growable string buffer private to src/util (JSON generator, option
 * strings). Allocation failure aborts, as for every small util allocation.
 */
#ifndef VDISK_UTIL_STRBUF_H
#define VDISK_UTIL_STRBUF_H

#include <locale.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vdisk/common.h"

typedef struct StrBuf {
    char *s;
    size_t len;
    size_t cap;
} StrBuf;

static inline void strbuf_reserve(StrBuf *b, size_t extra)
{
    if (b->len + extra + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->len + extra + 1) {
            cap *= 2;
        }
        char *s = realloc(b->s, cap);
        if (!s) {
            abort();
        }
        b->s = s;
        b->cap = cap;
    }
}

static inline void strbuf_add(StrBuf *b, const char *s, size_t n)
{
    strbuf_reserve(b, n);
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = '\0';
}

static inline void strbuf_puts(StrBuf *b, const char *s)
{
    strbuf_add(b, s, strlen(s));
}

static inline void strbuf_putc(StrBuf *b, char c)
{
    strbuf_reserve(b, 1);
    b->s[b->len++] = c;
    b->s[b->len] = '\0';
}

static inline void strbuf_pad(StrBuf *b, char c, size_t n)
{
    strbuf_reserve(b, n);
    memset(b->s + b->len, c, n);
    b->len += n;
    b->s[b->len] = '\0';
}

VD_PRINTF(2, 3) static inline void strbuf_printf(StrBuf *b, const char *fmt, ...)
{
    char tmp[64];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0) {
        return;
    }
    if ((size_t)n < sizeof(tmp)) {
        strbuf_add(b, tmp, (size_t)n);
        return;
    }
    strbuf_reserve(b, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(b->s + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

/*
 * Numbers in JSON and option strings use '.' whatever LC_NUMERIC the
 * program set: conversions go through a private "C" locale.
 */
VD_UNUSED static locale_t g_strbuf_c_locale;
VD_UNUSED static pthread_once_t g_strbuf_c_locale_once = PTHREAD_ONCE_INIT;

static inline void strbuf_c_locale_init(void)
{
    g_strbuf_c_locale = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0);
    if (!g_strbuf_c_locale) {
        abort();
    }
}

static inline locale_t strbuf_c_locale(void)
{
    pthread_once(&g_strbuf_c_locale_once, strbuf_c_locale_init);
    return g_strbuf_c_locale;
}

VD_UNUSED static inline double strbuf_strtod_c(const char *s)
{
    return strtod_l(s, NULL, strbuf_c_locale());
}

/* snprintf(buf, size, "%.*g", prec, d) in the C locale. */
VD_UNUSED static inline void strbuf_format_double_c(char *buf, size_t size, int prec, double d)
{
    locale_t old = uselocale(strbuf_c_locale());
    snprintf(buf, size, "%.*g", prec, d);
    uselocale(old);
}

/* Returns the malloc'ed string (never NULL) and resets b. */
static inline char *strbuf_finish(StrBuf *b)
{
    strbuf_reserve(b, 0);
    b->s[b->len] = '\0';
    char *s = b->s;
    b->s = NULL;
    b->len = b->cap = 0;
    return s;
}

#endif
