/*
 * Helpers shared by vdisk-img and vdisk-io (see tool-common.h): the number
 * syntax and output formats users know from qemu-img and qemu-io.
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "vdisk/throttle.h"
#include "tool-common.h"

int64_t tool_parse_size(const char *s)
{
    const char *p = s;
    uint64_t val = 0, mul = 1;
    double frac = 0;
    bool has_frac = false, hex = false;

    if (*p == '+') {
        p++;          /* strtoull-style sign, as qemu accepts it */
    }
    if (!isdigit((unsigned char)*p)) {
        return -EINVAL;
    }
    if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
        char *end;
        hex = true;
        p += 2;
        if (!isxdigit((unsigned char)*p)) {
            return -EINVAL;
        }
        errno = 0;
        val = strtoull(p, &end, 16);
        if (errno == ERANGE) {
            return -ERANGE;
        }
        p = end;
    } else {
        for (; isdigit((unsigned char)*p); p++) {
            unsigned d = *p - '0';
            if (val > (UINT64_MAX - d) / 10) {
                return -ERANGE;
            }
            val = val * 10 + d;
        }
        if (*p == '.') {
            double scale = 0.1;
            has_frac = true;
            for (p++; isdigit((unsigned char)*p); p++) {
                frac += (*p - '0') * scale;
                scale /= 10;
            }
        }
    }
    switch (*p) {
    case '\0': mul = 1; break;
    case 'b': case 'B': mul = 1; break;
    case 'k': case 'K': mul = 1ULL << 10; break;
    case 'm': case 'M': mul = 1ULL << 20; break;
    case 'g': case 'G': mul = 1ULL << 30; break;
    case 't': case 'T': mul = 1ULL << 40; break;
    case 'p': case 'P': mul = 1ULL << 50; break;
    case 'e': case 'E': mul = 1ULL << 60; break;
    default: return -EINVAL;
    }
    if (*p) {
        p++;
    }
    if (*p) {
        return -EINVAL;
    }
    if (has_frac && mul == 1 && frac != 0) {
        return -EINVAL;     /* a fraction of a byte */
    }
    if (has_frac && mul == 1 && p != s && (p[-1] == 'b' || p[-1] == 'B')) {
        return -EINVAL;
    }
    (void)hex;
    if (val > (uint64_t)INT64_MAX / mul) {
        return -ERANGE;
    }
    val *= mul;
    if (has_frac) {
        uint64_t extra = (uint64_t)llround(frac * (double)mul);   /* nearest, as qemu */
        if (val + extra > (uint64_t)INT64_MAX) {
            return -ERANGE;
        }
        val += extra;
    }
    return (int64_t)val;
}

void tool_size_to_str(double value, char *buf, size_t size)
{
    static const char *const units[] = { " EiB", " PiB", " TiB", " GiB", " MiB", " KiB" };
    char *dot;
    int shift = 60;

    for (int i = 0; i < 6; i++, shift -= 10) {
        double unit = ldexp(1.0, shift);
        if (value >= unit) {
            snprintf(buf, size, "%.3f", value / unit);
            dot = strstr(buf, ".000");
            if (dot) {
                *dot = '\0';
            }
            strncat(buf, units[i], size - strlen(buf) - 1);
            return;
        }
    }
    snprintf(buf, size, "%f", value);
    dot = strstr(buf, ".000");
    if (dot) {
        *dot = '\0';
    }
    strncat(buf, " bytes", size - strlen(buf) - 1);
}

void tool_size_to_str_img(uint64_t value, char *buf, size_t size)
{
    static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB" };
    int i = 0;
    double v = (double)value;

    while (i < 6 && value >= (1ULL << (10 * (i + 1)))) {
        i++;
    }
    v = (double)value / ldexp(1.0, 10 * i);
    snprintf(buf, size, "%0.3g %s", v, units[i]);
}

/* A copy of v with every object's keys in QEMU's QDict iteration order. */
static VdJson *tool_json_qemu_order(const VdJson *v)
{
    VdJson *copy = v ? vd_json_deep_copy(v) : NULL;
    vd_json_qemu_order(copy);
    return copy;
}

void tool_print_json(FILE *out, const VdJson *v)
{
    VdJson *ordered = tool_json_qemu_order(v);
    char *s = vd_json_to_string(ordered, true);
    fprintf(out, "%s\n", s);
    free(s);
    vd_json_unref(ordered);
}

static void tool_print_key(FILE *out, const char *key, int indent)
{
    fprintf(out, "%*s", indent, "");
    for (const char *p = key; *p; p++) {
        fputc(*p == '-' ? ' ' : *p, out);
    }
}

static void tool_print_scalar(FILE *out, const VdJson *v)
{
    switch (vd_json_type(v)) {
    case VD_JSON_NULL: fputs("null", out); break;
    case VD_JSON_BOOL: fputs(vd_json_get_bool(v) ? "true" : "false", out); break;
    case VD_JSON_INT: fprintf(out, "%" PRId64, vd_json_get_int(v)); break;
    case VD_JSON_UINT: fprintf(out, "%" PRIu64, vd_json_get_uint(v)); break;
    case VD_JSON_DOUBLE: fprintf(out, "%g", vd_json_get_double(v)); break;
    case VD_JSON_STRING: fputs(vd_json_get_string(v), out); break;
    default: break;
    }
}

static void tool_dump_value(FILE *out, const VdJson *v, int indent);

static void tool_dump_object(FILE *out, const VdJson *o, int indent)
{
    for (size_t i = 0; i < vd_json_object_size(o); i++) {
        VdJson *val;
        const char *key = vd_json_object_entry(o, i, &val);
        VdJsonType t = vd_json_type(val);
        tool_print_key(out, key, indent);
        if (t == VD_JSON_OBJECT || t == VD_JSON_ARRAY) {
            fputs(":\n", out);
            tool_dump_value(out, val, indent + 4);
        } else {
            fputs(": ", out);
            tool_print_scalar(out, val);
            fputc('\n', out);
        }
    }
}

static void tool_dump_value(FILE *out, const VdJson *v, int indent)
{
    if (vd_json_type(v) == VD_JSON_OBJECT) {
        tool_dump_object(out, v, indent);
    } else if (vd_json_type(v) == VD_JSON_ARRAY) {
        for (size_t i = 0; i < vd_json_array_size(v); i++) {
            VdJson *e = vd_json_array_get(v, i);
            VdJsonType t = vd_json_type(e);
            fprintf(out, "%*s[%zu]:", indent, "", i);
            if (t == VD_JSON_OBJECT || t == VD_JSON_ARRAY) {
                fputc('\n', out);
                tool_dump_value(out, e, indent + 4);
            } else {
                fputc(' ', out);
                tool_print_scalar(out, e);
                fputc('\n', out);
            }
        }
    }
}

void tool_dump_specific(FILE *out, const VdJson *data, int indent)
{
    VdJson *ordered = tool_json_qemu_order(data);
    tool_dump_value(out, ordered, indent);
    vd_json_unref(ordered);
}

int tool_object_add(const char *def)
{
    VdError *err = NULL;
    VdOpts *o = vd_opts_parse(def, "qom-type", &err);
    if (!o) {
        tool_error("%s", err ? err->msg : "invalid --object");
        vd_error_free(err);
        return 1;
    }
    VdJson *t = vd_opts_lookup(o, "qom-type");
    const char *type = t ? vd_json_get_string(t) : NULL;
    if (!type || strcmp(type, "throttle-group")) {
        vd_json_unref(o);
        return 0;
    }
    if (vd_throttle_object_add(o, &err) < 0) {
        tool_error("%s", err ? err->msg : "invalid --object");
        vd_error_free(err);
        return 1;
    }
    return 0;
}

int tool_objects_from_argv(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *def = NULL;
        if (!strcmp(argv[i], "--object") && i + 1 < argc) {
            def = argv[++i];
        } else if (!strncmp(argv[i], "--object=", 9)) {
            def = argv[i] + 9;
        }
        if (def && tool_object_add(def)) {
            return 1;
        }
    }
    return 0;
}
