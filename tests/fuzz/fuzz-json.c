/*
 * Fuzz target for the JSON parser, generators and stream splitter.
 * Checks: no crash or leak on any input; an accepted value prints, and the
 * printed text (compact and pretty) parses back to the same value; the
 * stream splitter fed in pieces never crashes and delivers what it parsed.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz-check.h"
#include "vdisk/json.h"

static char *reprint(const char *text, bool pretty)
{
    VdError *err = NULL;
    VdJson *v = vd_json_parse(text, strlen(text), &err);
    fuzz_check(v != NULL && err == NULL);
    char *s = vd_json_to_string(v, pretty);
    vd_json_unref(v);
    return s;
}

static void stream_cb(void *opaque, VdJson *value, VdError *err)
{
    size_t *count = opaque;
    fuzz_check((value == NULL) != (err == NULL));
    if (value) {
        char *s = vd_json_to_string(value, false);
        free(s);
        vd_json_unref(value);
    }
    vd_error_free(err);
    (*count)++;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    VdError *err = NULL;
    VdJson *v = vd_json_parse((const char *)data, size, &err);
    if (v) {
        fuzz_check(err == NULL);
        char *compact = vd_json_to_string(v, false);
        char *pretty = vd_json_to_string(v, true);
        /* Output is valid JSON and stable under a second round trip. */
        char *c2 = reprint(compact, false);
        char *c3 = reprint(pretty, false);
        fuzz_check(strcmp(compact, c2) == 0);
        fuzz_check(strcmp(compact, c3) == 0);
        VdJson *copy = vd_json_deep_copy(v);
        char *c4 = vd_json_to_string(copy, false);
        fuzz_check(strcmp(compact, c4) == 0);
        free(compact);
        free(pretty);
        free(c2);
        free(c3);
        free(c4);
        vd_json_unref(copy);
        vd_json_unref(v);
    } else {
        fuzz_check(err != NULL && err->msg != NULL);
        vd_error_free(err);
    }

    /* Stream: pieces whose sizes come from the data itself. */
    size_t count = 0;
    size_t max = 16 + (size ? data[0] : 0) * 4;
    VdJsonStream *s = vd_json_stream_new(stream_cb, &count, max);
    size_t pos = 0;
    while (pos < size) {
        size_t chunk = 1 + (data[pos] % 13);
        if (chunk > size - pos) {
            chunk = size - pos;
        }
        vd_json_stream_feed(s, (const char *)data + pos, chunk);
        pos += chunk;
    }
    vd_json_stream_free(s);
    return 0;
}
