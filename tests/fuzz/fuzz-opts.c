/*
 * Fuzz target for option strings: key=value and json: parsing, the typed
 * take-getters, leftover reporting and size parsing. Checks: no crash or
 * leak; a key=value tree flattened with vd_opts_to_string parses back to
 * the same tree.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz-check.h"
#include "vdisk/opts.h"

static void exercise_getters(VdOpts *o)
{
    static const char *const modes[] = { "off", "on", "unmap", NULL };
    VdError *err = NULL;
    char *str = NULL;
    bool b;
    uint64_t u;
    int64_t i;
    int e;

    vd_opts_take_str(o, "driver", NULL, &str, &err);
    free(str);
    str = NULL;
    vd_error_free_and_clear(&err);
    vd_opts_take_size(o, "size", 0, &u, &err);
    vd_error_free_and_clear(&err);
    vd_opts_take_size(o, "cluster-size", 65536, &u, &err);
    vd_error_free_and_clear(&err);
    vd_opts_take_bool(o, "read-only", false, &b, &err);
    vd_error_free_and_clear(&err);
    vd_opts_take_uint(o, "refcount-bits", 16, &u, &err);
    vd_error_free_and_clear(&err);
    vd_opts_take_int(o, "offset", 0, &i, &err);
    vd_error_free_and_clear(&err);
    vd_opts_take_enum(o, "discard", modes, 0, &e, &err);
    vd_error_free_and_clear(&err);
    vd_opts_take_str(o, "file.filename", NULL, &str, &err);
    free(str);
    vd_error_free_and_clear(&err);
    VdOpts *sub = vd_opts_take_sub(o, "file");
    if (sub) {
        vd_opts_take_bool(sub, "cache.direct", false, &b, &err);
        vd_error_free_and_clear(&err);
        vd_opts_check_empty(sub, "Block protocol 'file'", &err);
        vd_error_free_and_clear(&err);
        vd_json_unref(sub);
    }
    if (vd_opts_check_empty(o, "Block format 'raw'", &err) < 0) {
        fuzz_check(err != NULL);
    }
    vd_error_free_and_clear(&err);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *str = malloc(size + 1);
    if (!str) {
        return 0;
    }
    memcpy(str, data, size);
    str[size] = '\0';

    uint64_t sz;
    vd_parse_size(str, &sz);
    int64_t si;
    vd_parse_int(str, &si);

    for (int implied = 0; implied < 2; implied++) {
        VdError *err = NULL;
        VdOpts *o = vd_opts_parse(str, implied ? "file" : NULL, &err);
        if (!o) {
            fuzz_check(err != NULL);
            vd_error_free(err);
            continue;
        }
        fuzz_check(err == NULL);
        char *flat = vd_opts_to_string(o);
        bool keyval = str[0] != '{' && strncmp(str, "json:", 5) != 0;
        if (keyval) {
            /* Round trip: flatten, parse, compare trees. */
            VdOpts *o2 = vd_opts_parse(flat, NULL, &err);
            fuzz_check(o2 != NULL);
            char *j1 = vd_json_to_string(o, false);
            char *j2 = vd_json_to_string(o2, false);
            fuzz_check(strcmp(j1, j2) == 0);
            free(j1);
            free(j2);
            vd_json_unref(o2);
        } else {
            VdOpts *o2 = vd_opts_parse(flat, NULL, &err);
            vd_json_unref(o2);
            vd_error_free_and_clear(&err);
        }
        free(flat);
        exercise_getters(o);
        vd_json_unref(o);
    }
    free(str);
    return 0;
}
