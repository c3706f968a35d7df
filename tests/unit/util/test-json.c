/*
 * Unit tests for src/util/json.c: value tree, strict parser (errors with
 * offsets, depth bound, escapes, numbers), compact and qemu-img pretty
 * output, and the stream splitter fed byte by byte.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "vdisk/json.h"

#define TEST(path, fn) { path, fn, NULL, NULL, NULL }

static VdJson *parse_ok(const char *text)
{
    VdError *err = NULL;
    VdJson *v = vd_json_parse(text, strlen(text), &err);
    if (!v) {
        fail_msg("unexpected parse error for '%s': %s", text, err->msg);
    }
    assert_null(err);
    return v;
}

/* Parse must fail; returns the message (caller frees). */
static char *parse_fail(const char *text, size_t len)
{
    VdError *err = NULL;
    VdJson *v = vd_json_parse(text, len, &err);
    if (v) {
        char *s = vd_json_to_string(v, false);
        fail_msg("'%.*s' parsed as %s but must fail", (int)len, text, s);
    }
    assert_non_null(err);
    assert_int_equal(err->code, EINVAL);
    assert_non_null(strstr(err->msg, "JSON parse error at offset "));
    char *msg = strdup(err->msg);
    vd_error_free(err);
    return msg;
}

static void expect_fail_at(const char *text, size_t offset, const char *what)
{
    char *msg = parse_fail(text, strlen(text));
    char expect[256];
    snprintf(expect, sizeof(expect), "JSON parse error at offset %zu: %s", offset, what);
    assert_string_equal(msg, expect);
    free(msg);
}

static void test_values(void **state)
{
    VdJson *o = vd_json_object();
    vd_json_object_put_str(o, "s", "text");
    vd_json_object_put_int(o, "i", -5);
    vd_json_object_put_bool(o, "b", true);
    vd_json_object_put(o, "u", vd_json_uint(UINT64_MAX));
    vd_json_object_put(o, "small-u", vd_json_uint(7));
    vd_json_object_put(o, "d", vd_json_double(2.5));
    vd_json_object_put(o, "n", vd_json_null());
    VdJson *a = vd_json_array();
    vd_json_array_append(a, vd_json_int(1));
    vd_json_array_append(a, vd_json_string_len("a\0b", 3));
    vd_json_object_put(o, "a", a);

    assert_int_equal(vd_json_object_size(o), 8);
    assert_string_equal(vd_json_get_string(vd_json_object_get(o, "s")), "text");
    assert_int_equal(vd_json_get_int(vd_json_object_get(o, "i")), -5);
    assert_true(vd_json_get_bool(vd_json_object_get(o, "b")));
    assert_int_equal(vd_json_type(vd_json_object_get(o, "u")), VD_JSON_UINT);
    assert_true(vd_json_get_uint(vd_json_object_get(o, "u")) == UINT64_MAX);
    assert_int_equal(vd_json_get_int(vd_json_object_get(o, "u")), INT64_MAX);  /* clamped */
    assert_int_equal(vd_json_type(vd_json_object_get(o, "small-u")), VD_JSON_INT);
    assert_true(vd_json_get_double(vd_json_object_get(o, "d")) == 2.5);
    assert_int_equal(vd_json_get_int(vd_json_object_get(o, "d")), 2);
    assert_int_equal(vd_json_get_uint(vd_json_object_get(o, "i")), 0);
    assert_int_equal(vd_json_type(vd_json_object_get(o, "n")), VD_JSON_NULL);
    assert_null(vd_json_get_string(vd_json_object_get(o, "i")));
    assert_null(vd_json_object_get(o, "missing"));
    assert_int_equal(vd_json_array_size(a), 2);
    assert_null(vd_json_array_get(a, 2));
    assert_null(vd_json_array_get(o, 0));

    char *s = vd_json_to_string(o, false);
    assert_string_equal(s, "{\"s\":\"text\",\"i\":-5,\"b\":true,\"u\":18446744073709551615,"
                           "\"small-u\":7,\"d\":2.5,\"n\":null,\"a\":[1,\"a\\u0000b\"]}");
    free(s);

    /* put replaces in place, del keeps the order of the rest */
    vd_json_object_put_int(o, "s", 9);
    assert_true(vd_json_object_del(o, "b"));
    assert_false(vd_json_object_del(o, "b"));
    VdJson *v;
    assert_string_equal(vd_json_object_entry(o, 0, &v), "s");
    assert_int_equal(vd_json_get_int(v), 9);
    assert_string_equal(vd_json_object_entry(o, 1, &v), "i");
    assert_string_equal(vd_json_object_entry(o, 2, &v), "u");
    assert_null(vd_json_object_entry(o, 7, &v));
    assert_null(v);

    /* refcount and deep copy */
    VdJson *copy = vd_json_deep_copy(o);
    VdJson *ref = vd_json_ref(o);
    vd_json_unref(o);
    vd_json_object_put_int(ref, "i", 100);
    assert_int_equal(vd_json_get_int(vd_json_object_get(copy, "i")), -5);
    char *s1 = vd_json_to_string(copy, false);
    vd_json_object_put_int(ref, "i", -5);
    char *s2 = vd_json_to_string(ref, false);
    assert_string_equal(s1, s2);
    free(s1);
    free(s2);
    vd_json_unref(ref);
    vd_json_unref(copy);
    vd_json_unref(NULL);
}

/* Objects big enough to use the hash index: put, get, replace, delete. */
static void test_big_object(void **state)
{
    VdJson *o = vd_json_object();
    char key[32];
    for (int i = 0; i < 2000; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        vd_json_object_put_int(o, key, i);
    }
    for (int i = 0; i < 2000; i += 3) {
        snprintf(key, sizeof(key), "k%d", i);
        assert_true(vd_json_object_del(o, key));
    }
    for (int i = 0; i < 2000; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        VdJson *v = vd_json_object_get(o, key);
        if (i % 3 == 0) {
            assert_null(v);
        } else {
            assert_non_null(v);
            assert_int_equal(vd_json_get_int(v), i);
        }
    }
    vd_json_object_put_int(o, "k1", -1);
    VdJson *v;
    assert_string_equal(vd_json_object_entry(o, 0, &v), "k1");
    assert_int_equal(vd_json_get_int(v), -1);
    assert_int_equal(vd_json_object_size(o), 2000 - 667);
    vd_json_unref(o);
}

static void round_trip(const char *text, const char *compact)
{
    VdJson *v = parse_ok(text);
    char *c = vd_json_to_string(v, false);
    assert_string_equal(c, compact);
    char *p = vd_json_to_string(v, true);
    VdJson *v2 = parse_ok(p);
    char *c2 = vd_json_to_string(v2, false);
    assert_string_equal(c2, compact);
    free(c);
    free(p);
    free(c2);
    vd_json_unref(v);
    vd_json_unref(v2);
}

static void test_round_trip(void **state)
{
    round_trip(" { \"a\" : [ 1 , 2 , { } , [ ] ] , \"b\" : null }\r\n",
               "{\"a\":[1,2,{},[]],\"b\":null}");
    round_trip("[true,false,null,\"\",0,-0,1.5,-2.25e-3]",
               "[true,false,null,\"\",0,0,1.5,-0.00225]");
    round_trip("\"x\"", "\"x\"");
    round_trip("42", "42");
    round_trip("[9223372036854775807,-9223372036854775808,18446744073709551615]",
               "[9223372036854775807,-9223372036854775808,18446744073709551615]");
    /* beyond 64 bits: doubles */
    round_trip("[18446744073709551616,-9223372036854775809]",
               "[1.8446744073709552e+19,-9.223372036854776e+18]");
    round_trip("[0.1,1e-300,123456.789,1E2,5e+0]", "[0.1,1e-300,123456.789,100.0,5.0]");
    round_trip("{\"nested\":{\"deeper\":{\"x\":[[[]]]}}}",
               "{\"nested\":{\"deeper\":{\"x\":[[[]]]}}}");

    VdJson *v = parse_ok("[1, 1.0, 18446744073709551615, 1e2]");
    assert_int_equal(vd_json_type(vd_json_array_get(v, 0)), VD_JSON_INT);
    assert_int_equal(vd_json_type(vd_json_array_get(v, 1)), VD_JSON_DOUBLE);
    assert_int_equal(vd_json_type(vd_json_array_get(v, 2)), VD_JSON_UINT);
    assert_int_equal(vd_json_type(vd_json_array_get(v, 3)), VD_JSON_DOUBLE);
    vd_json_unref(v);
}

static void test_strings(void **state)
{
    VdJson *v = parse_ok("\"\\\"\\\\\\/\\b\\f\\n\\r\\t\\u0041\\u00e9\\u20AC\\ud83d\\ude00\"");
    const char expect[] = "\"\\/\b\f\n\r\tA\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80";
    assert_string_equal(vd_json_get_string(v), expect);
    char *s = vd_json_to_string(v, false);
    /* qemu-img escaping: non-ASCII as \uXXXX upper-case, surrogate pairs, '/' as is */
    assert_string_equal(s, "\"\\\"\\\\/\\b\\f\\n\\r\\tA\\u00E9\\u20AC\\uD83D\\uDE00\"");
    free(s);
    vd_json_unref(v);

    /* raw UTF-8 is accepted and kept */
    v = parse_ok("\"caf\xc3\xa9\"");
    assert_string_equal(vd_json_get_string(v), "caf\xc3\xa9");
    vd_json_unref(v);

    /* invalid UTF-8 in a constructed string is written as U+FFFD */
    v = vd_json_string("a\xff" "b\x01");
    s = vd_json_to_string(v, false);
    assert_string_equal(s, "\"a\\uFFFDb\\u0001\"");
    free(s);
    vd_json_unref(v);

    /* a NUL in a string is refused, as QEMU does: every user of a string
     * takes it as a C string, "x\u0000y" would silently become "x" */
    expect_fail_at("\"a\\u0000b\"", 2, "\\u0000 is not supported");
    expect_fail_at("{\"execute\":\"query-version\\u0000x\"}", 25, "\\u0000 is not supported");
    /* parsed scalars are typed (no conversion by option getters), built ones not */
    v = parse_ok("{\"a\":\"12\",\"b\":[1,true]}");
    assert_true(vd_json_is_typed(vd_json_object_get(v, "a")));
    assert_true(vd_json_is_typed(vd_json_array_get(vd_json_object_get(v, "b"), 1)));
    VdJson *c = vd_json_deep_copy(v);
    assert_true(vd_json_is_typed(vd_json_object_get(c, "a")));
    vd_json_set_untyped(c);
    assert_false(vd_json_is_typed(vd_json_object_get(c, "a")));
    assert_false(vd_json_is_typed(vd_json_array_get(vd_json_object_get(c, "b"), 0)));
    assert_true(vd_json_is_typed(vd_json_object_get(v, "a")));
    vd_json_unref(c);
    vd_json_unref(v);
    v = vd_json_string("12");
    assert_false(vd_json_is_typed(v));
    vd_json_unref(v);
}

static void test_bad(void **state)
{
    expect_fail_at("", 0, "unexpected end of input");
    expect_fail_at("   ", 3, "unexpected end of input");
    expect_fail_at("{\"a\" 1}", 5, "expected ':' but found '1'");
    expect_fail_at("[1,2", 4, "expected ',' or ']' but found end of input");
    expect_fail_at("[1,]", 3, "unexpected ']'");
    expect_fail_at("{\"a\":1,}", 7, "expected string key but found '}'");
    expect_fail_at("{a:1}", 1, "expected string key but found 'a'");
    expect_fail_at("{\"a\":1,\"a\":2}", 7, "duplicate key 'a'");
    expect_fail_at("[1] x", 4, "trailing 'x' after the value");
    expect_fail_at("01", 0, "leading zero in number");
    expect_fail_at("-", 0, "invalid number");
    expect_fail_at("1.", 0, "digit expected after '.' in number");
    expect_fail_at("1e", 0, "digit expected in exponent");
    expect_fail_at("[1e400]", 1, "number out of range");
    expect_fail_at("-1e400", 0, "number out of range");
    expect_fail_at("\"\\x\"", 1, "invalid escape '\\x'");
    expect_fail_at("\"\\u12G4\"", 1, "invalid \\u escape");
    expect_fail_at("\"\\u12\"", 1, "invalid \\u escape");
    expect_fail_at("\"\\ud800\"", 1, "high surrogate \\uD800 not followed by a low surrogate");
    expect_fail_at("\"\\ud800\\u0041\"", 1,
                   "high surrogate \\uD800 not followed by a low surrogate");
    expect_fail_at("\"\\udc00\"", 1, "lone low surrogate \\uDC00");
    expect_fail_at("\"abc", 0, "unterminated string");
    expect_fail_at("\"a\nb\"", 2, "control character 0x0a in string");
    expect_fail_at("\"\x1f\"", 1, "control character 0x1f in string");
    expect_fail_at("\"\x7f\x01\"", 2, "control character 0x01 in string");
    expect_fail_at("\"\xc3\"", 1, "invalid UTF-8 in string");
    expect_fail_at("\"\xc0\xaf\"", 1, "invalid UTF-8 in string");        /* overlong */
    expect_fail_at("\"\xed\xa0\x80\"", 1, "invalid UTF-8 in string");    /* surrogate */
    expect_fail_at("\"\xf4\x90\x80\x80\"", 1, "invalid UTF-8 in string"); /* > U+10FFFF */
    expect_fail_at("{\"a\\u0000\":1}", 3, "\\u0000 is not supported");
    expect_fail_at("tru", 0, "unexpected 't'");
    expect_fail_at("nul", 0, "unexpected 'n'");
    expect_fail_at("+1", 0, "unexpected '+'");
    expect_fail_at(".5", 0, "unexpected '.'");
    expect_fail_at("NaN", 0, "unexpected 'N'");
    expect_fail_at("'a'", 0, "unexpected '''");
    expect_fail_at("[1 2]", 3, "expected ',' or ']' but found '2'");
    expect_fail_at("\x0c" "1", 0, "unexpected byte 0x0c");

    /* an embedded NUL byte ends nothing: length is what counts */
    char *msg = parse_fail("[1]\0", 4);
    assert_string_equal(msg, "JSON parse error at offset 3: trailing byte 0x00 after the value");
    free(msg);
    /* and input is not read past len */
    msg = parse_fail("[1]", 2);
    free(msg);
}

/* Every proper prefix of a document is rejected, none crashes. */
static void test_truncated(void **state)
{
    const char *doc = "{\"a\": [1, -2.5e3, \"x\\u00e9\\ud83d\\ude00\", true, false, null],"
                      " \"b\": {\"c\": {}}, \"d\": \"\"}";
    size_t len = strlen(doc);
    for (size_t i = 0; i < len; i++) {
        free(parse_fail(doc, i));
    }
    vd_json_unref(parse_ok(doc));
}

static void test_depth(void **state)
{
    char buf[2 * VD_JSON_MAX_DEPTH + 3];
    /* exactly VD_JSON_MAX_DEPTH nested arrays: fine */
    memset(buf, '[', VD_JSON_MAX_DEPTH);
    memset(buf + VD_JSON_MAX_DEPTH, ']', VD_JSON_MAX_DEPTH);
    buf[2 * VD_JSON_MAX_DEPTH] = '\0';
    vd_json_unref(parse_ok(buf));
    /* one more: error at the offending bracket */
    memset(buf, '[', VD_JSON_MAX_DEPTH + 1);
    memset(buf + VD_JSON_MAX_DEPTH + 1, ']', VD_JSON_MAX_DEPTH + 1);
    buf[2 * VD_JSON_MAX_DEPTH + 2] = '\0';
    expect_fail_at(buf, VD_JSON_MAX_DEPTH, "nesting deeper than 64");

    /* a depth bomb of mixed brackets */
    size_t n = 1 << 20;
    char *bomb = malloc(n);
    for (size_t i = 0; i < n; i++) {
        bomb[i] = i % 2 ? '[' : '{';
        if (i % 2 == 0 && i > 0) {
            bomb[i] = '[';
        }
    }
    free(parse_fail(bomb, n));
    for (size_t i = 0; i < n; i += 5) {
        memcpy(bomb + i, "{\"a\":", VD_MIN(5, n - i));
    }
    free(parse_fail(bomb, n));
    free(bomb);
}

static void test_pretty(void **state)
{
    /* the layout of qemu-img info --output=json (qemu-img 7.2) */
    const char *in =
        "{\"backing-filename-format\":\"qcow2\",\"snapshots\":[{\"icount\":0,"
        "\"name\":\"snap1\",\"id\":\"1\"}],\"virtual-size\":67108864,"
        "\"format-specific\":{\"type\":\"qcow2\",\"data\":{\"compat\":\"1.1\","
        "\"lazy-refcounts\":false}},\"dirty-flag\":false}";
    const char *expect =
        "{\n"
        "    \"backing-filename-format\": \"qcow2\",\n"
        "    \"snapshots\": [\n"
        "        {\n"
        "            \"icount\": 0,\n"
        "            \"name\": \"snap1\",\n"
        "            \"id\": \"1\"\n"
        "        }\n"
        "    ],\n"
        "    \"virtual-size\": 67108864,\n"
        "    \"format-specific\": {\n"
        "        \"type\": \"qcow2\",\n"
        "        \"data\": {\n"
        "            \"compat\": \"1.1\",\n"
        "            \"lazy-refcounts\": false\n"
        "        }\n"
        "    },\n"
        "    \"dirty-flag\": false\n"
        "}";
    VdJson *v = parse_ok(in);
    char *s = vd_json_to_string(v, true);
    assert_string_equal(s, expect);
    free(s);
    vd_json_unref(v);

    /* empty containers and nested arrays, as qemu's JSON writer prints them */
    v = parse_ok("{\"a\":[],\"b\":{},\"c\":[[1],[]]}");
    s = vd_json_to_string(v, true);
    assert_string_equal(s,
        "{\n"
        "    \"a\": [\n"
        "    ],\n"
        "    \"b\": {\n"
        "    },\n"
        "    \"c\": [\n"
        "        [\n"
        "            1\n"
        "        ],\n"
        "        [\n"
        "        ]\n"
        "    ]\n"
        "}");
    free(s);
    vd_json_unref(v);

    v = vd_json_object();
    s = vd_json_to_string(v, true);
    assert_string_equal(s, "{\n}");
    free(s);
    vd_json_unref(v);
    v = vd_json_array();
    s = vd_json_to_string(v, true);
    assert_string_equal(s, "[\n]");
    free(s);
    vd_json_unref(v);
    s = vd_json_to_string(NULL, false);
    assert_string_equal(s, "null");
    free(s);
}

/* ---- stream ---- */

typedef struct Collected {
    char *values[16];
    char *errors[16];
    int nvalues, nerrors;
    char order[33];   /* 'v' or 'e' per callback */
} Collected;

static void collect_cb(void *opaque, VdJson *value, VdError *err)
{
    Collected *c = opaque;
    int n = c->nvalues + c->nerrors;
    assert_true(n < 32);
    if (value) {
        assert_null(err);
        assert_true(c->nvalues < 16);
        c->values[c->nvalues++] = vd_json_to_string(value, false);
        c->order[n] = 'v';
        vd_json_unref(value);
    } else {
        assert_non_null(err);
        assert_true(c->nerrors < 16);
        c->errors[c->nerrors++] = strdup(err->msg);
        c->order[n] = 'e';
        vd_error_free(err);
    }
}

static void collected_free(Collected *c)
{
    for (int i = 0; i < c->nvalues; i++) {
        free(c->values[i]);
    }
    for (int i = 0; i < c->nerrors; i++) {
        free(c->errors[i]);
    }
    memset(c, 0, sizeof(*c));
}

static void feed_bytewise(VdJsonStream *s, const char *text)
{
    for (size_t i = 0; text[i]; i++) {
        vd_json_stream_feed(s, text + i, 1);
    }
}

static void test_stream(void **state)
{
    const char *input =
        "{\"execute\": \"qmp_capabilities\"}\n"
        "  {\"execute\":\"query\",\"arguments\":{\"s\":\"}{][\\\"\\\\\"}}"
        "[1,[2]]\"str\\\"ing\" 42 true\r\n{}";
    const char *expect[] = {
        "{\"execute\":\"qmp_capabilities\"}",
        "{\"execute\":\"query\",\"arguments\":{\"s\":\"}{][\\\"\\\\\"}}",
        "[1,[2]]", "\"str\\\"ing\"", "42", "true", "{}",
    };
    /* byte by byte, then all at once, then in chunks of 7 */
    for (int mode = 0; mode < 3; mode++) {
        Collected c = { 0 };
        VdJsonStream *s = vd_json_stream_new(collect_cb, &c, 4096);
        if (mode == 0) {
            feed_bytewise(s, input);
        } else if (mode == 1) {
            vd_json_stream_feed(s, input, strlen(input));
        } else {
            for (size_t i = 0; i < strlen(input); i += 7) {
                vd_json_stream_feed(s, input + i, VD_MIN(7, strlen(input) - i));
            }
        }
        assert_int_equal(c.nerrors, 0);
        assert_int_equal(c.nvalues, VD_ARRAY_SIZE(expect));
        for (size_t i = 0; i < VD_ARRAY_SIZE(expect); i++) {
            assert_string_equal(c.values[i], expect[i]);
        }
        vd_json_stream_free(s);
        collected_free(&c);
    }
}

static void test_stream_errors(void **state)
{
    Collected c = { 0 };
    VdJsonStream *s = vd_json_stream_new(collect_cb, &c, 64);
    /* syntax error inside a balanced object: one error, then next value ok */
    feed_bytewise(s, "{\"a\" 1}{\"ok\":1}");
    /* mismatched bracket: error, garbage skipped until the next '{' */
    feed_bytewise(s, "{\"a\":[1}] 5 [\"skipped\"] {\"ok\":2}");
    /* stray closing bracket at top level */
    feed_bytewise(s, "] {\"ok\":3}");
    /* too large a value */
    feed_bytewise(s, "{\"big\":\"");
    for (int i = 0; i < 100; i++) {
        feed_bytewise(s, "x");
    }
    feed_bytewise(s, "\"} {\"ok\":4}");
    /* too deep */
    feed_bytewise(s, "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[{\"ok\":5}");
    assert_string_equal(c.order, "eveveveve" "v");
    assert_int_equal(c.nvalues, 5);
    for (int i = 0; i < 5; i++) {
        char expect[32];
        snprintf(expect, sizeof(expect), "{\"ok\":%d}", i + 1);
        assert_string_equal(c.values[i], expect);
    }
    assert_non_null(strstr(c.errors[0], "expected ':'"));
    assert_non_null(strstr(c.errors[1], "does not match"));
    assert_non_null(strstr(c.errors[2], "unexpected ']'"));
    assert_non_null(strstr(c.errors[3], "value longer than 64 bytes"));
    assert_non_null(strstr(c.errors[4], "nesting deeper than 64"));
    vd_json_stream_free(s);
    collected_free(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        TEST("/util/json/values", test_values),
        TEST("/util/json/big-object", test_big_object),
        TEST("/util/json/parse/round-trip", test_round_trip),
        TEST("/util/json/parse/strings", test_strings),
        TEST("/util/json/parse/bad", test_bad),
        TEST("/util/json/parse/truncated", test_truncated),
        TEST("/util/json/parse/depth", test_depth),
        TEST("/util/json/gen/pretty", test_pretty),
        TEST("/util/json/stream/split", test_stream),
        TEST("/util/json/stream/errors", test_stream_errors),
    };
    return cmocka_run_group_tests_name("util-json", tests, NULL, NULL);
}
