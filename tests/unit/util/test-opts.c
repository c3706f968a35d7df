/*
 * Unit tests for src/util/opts.c: key=value and json: option strings,
 * typed take-getters (consumption, errors naming key and value),
 * leftover reporting, and qemu-img compatible size parsing.
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

#include "vdisk/opts.h"

#define TEST(path, fn) { path, fn, NULL, NULL, NULL }

static VdOpts *parse_ok(const char *str, const char *implied)
{
    VdError *err = NULL;
    VdOpts *o = vd_opts_parse(str, implied, &err);
    if (!o) {
        fail_msg("'%s' failed: %s", str, err->msg);
    }
    return o;
}

static void expect_tree(const char *str, const char *implied, const char *json)
{
    VdOpts *o = parse_ok(str, implied);
    char *s = vd_json_to_string(o, false);
    assert_string_equal(s, json);
    free(s);
    vd_json_unref(o);
}

static void expect_parse_error(const char *str, const char *implied, const char *msg)
{
    VdError *err = NULL;
    VdOpts *o = vd_opts_parse(str, implied, &err);
    if (o) {
        char *s = vd_json_to_string(o, false);
        fail_msg("'%s' parsed as %s but must fail", str, s);
    }
    assert_non_null(err);
    assert_int_equal(err->code, EINVAL);
    if (strncmp(err->msg, msg, strlen(msg)) != 0) {
        fail_msg("'%s': message '%s' does not start with '%s'", str, err->msg, msg);
    }
    vd_error_free(err);
}

static void test_parse(void **state)
{
    expect_tree("", NULL, "{}");
    expect_tree("driver=qcow2,file.driver=file,file.filename=a.qcow2", NULL,
                "{\"driver\":\"qcow2\",\"file\":{\"driver\":\"file\",\"filename\":\"a.qcow2\"}}");
    expect_tree("a.b.c=1,a.b.d=2,a.e=3", NULL, "{\"a\":{\"b\":{\"c\":\"1\",\"d\":\"2\"},\"e\":\"3\"}}");
    /* ",," is a literal comma, also at the end and next to the separator */
    expect_tree("filename=a,,b.img,x=,,,y=1,,", NULL,
                "{\"filename\":\"a,b.img\",\"x\":\",\",\"y\":\"1,\"}");
    /* '=' in a value, empty value, trailing comma */
    expect_tree("a=b=c,d=,", NULL, "{\"a\":\"b=c\",\"d\":\"\"}");
    /* duplicate keys: last wins, first position kept */
    expect_tree("a=1,b=2,a=3", NULL, "{\"a\":\"3\",\"b\":\"2\"}");
    /* implied key */
    expect_tree("iothread,id=io0", "qom-type", "{\"qom-type\":\"iothread\",\"id\":\"io0\"}");
    expect_tree("my,,file.img,format=raw", "file", "{\"file\":\"my,file.img\",\"format\":\"raw\"}");
    expect_tree("id=io0", "qom-type", "{\"id\":\"io0\"}");
    /* key characters */
    expect_tree("a-b_c.D9=x", NULL, "{\"a-b_c\":{\"D9\":\"x\"}}");
    /* JSON forms keep types; dotted JSON keys are nested like key=value ones */
    expect_tree("json:{\"driver\":\"raw\",\"size\":512,\"ro\":true}", NULL,
                "{\"driver\":\"raw\",\"size\":512,\"ro\":true}");
    expect_tree("{\"file.driver\":\"file\",\"file\":{\"filename\":\"x\"},\"a.b.c\":[1]}", NULL,
                "{\"file\":{\"filename\":\"x\",\"driver\":\"file\"},\"a\":{\"b\":{\"c\":[1]}}}");
    expect_tree("json:{}", "file", "{}");
}

static void test_parse_errors(void **state)
{
    expect_parse_error("abc", NULL, "Expected '=' after parameter 'abc'");
    expect_parse_error("a=1,abc", NULL, "Expected '=' after parameter 'abc'");
    expect_parse_error("a=1,abc", "file", "Expected '=' after parameter 'abc'");
    expect_parse_error("=1", NULL, "Invalid parameter ''");
    expect_parse_error("a..b=1", NULL, "Invalid parameter 'a..b'");
    expect_parse_error(".a=1", NULL, "Invalid parameter '.a'");
    expect_parse_error("a.=1", NULL, "Invalid parameter 'a.'");
    expect_parse_error("a b=1", NULL, "Invalid parameter 'a b'");
    expect_parse_error("a=1,a.b=2", NULL, "Parameter 'a' used inconsistently");
    expect_parse_error("a.b=1,a=2", NULL, "Parameter 'a' used inconsistently");
    expect_parse_error("x.a=1,x.a.b=2", NULL, "Parameter 'x.a' used inconsistently");
    expect_parse_error("json:{\"a\":", NULL,
                       "Invalid JSON option string: JSON parse error at offset 5");
    expect_parse_error("json:[1]", NULL, "Invalid JSON option string: expected an object");
    expect_parse_error("{\"a\":1,\"a.b\":2}", NULL, "Parameter 'a.b' used inconsistently");
    char longkey[400];
    memset(longkey, 'k', 300);
    strcpy(longkey + 300, "=1");
    expect_parse_error(longkey, NULL, "Invalid parameter 'kkkk");
}

static void test_to_string(void **state)
{
    const char *strs[] = {
        "driver=qcow2,file.driver=file,file.filename=a,,b.img",
        "a=,b.c=,,,,",
        "x.y.z=1,x.w=2,q=3",
    };
    for (size_t i = 0; i < VD_ARRAY_SIZE(strs); i++) {
        VdOpts *o = parse_ok(strs[i], NULL);
        char *s = vd_opts_to_string(o);
        assert_string_equal(s, strs[i]);
        free(s);
        vd_json_unref(o);
    }
    VdOpts *o = parse_ok("json:{\"n\":1,\"b\":false,\"l\":[\"a,b\",2],\"z\":null,\"e\":{}}", NULL);
    char *s = vd_opts_to_string(o);
    assert_string_equal(s, "n=1,b=off,l.0=a,,b,l.1=2,z=");
    free(s);
    vd_json_unref(o);
}

static void test_set_lookup(void **state)
{
    VdOpts *o = vd_json_object();
    vd_opts_set(o, "file.filename", "x.img");
    vd_opts_set(o, "file.driver", "file");
    vd_opts_set_json(o, "size", vd_json_int(4096));
    vd_opts_set(o, "driver", "raw");
    /* overwriting a string with a subtree in the setter replaces it */
    vd_opts_set(o, "driver.sub", "z");
    assert_string_equal(vd_json_get_string(vd_opts_lookup(o, "file.filename")), "x.img");
    assert_int_equal(vd_json_get_int(vd_opts_lookup(o, "size")), 4096);
    assert_string_equal(vd_json_get_string(vd_opts_lookup(o, "driver.sub")), "z");
    assert_int_equal(vd_json_type(vd_opts_lookup(o, "file")), VD_JSON_OBJECT);
    assert_null(vd_opts_lookup(o, "file.nothing"));
    assert_null(vd_opts_lookup(o, "size.x"));
    assert_null(vd_opts_lookup(o, "nothing.x"));
    vd_json_unref(o);
}

static void test_take(void **state)
{
    VdOpts *o = parse_ok("name=n1,ro=on,rw=false,count=0x10,delta=-5,cluster-size=64k,"
                         "cache=writeback,file.filename=x.img,file.aio=io_uring,"
                         "file.locking.mode=off", NULL);
    VdError *err = NULL;
    char *str;
    bool b;
    uint64_t u;
    int64_t i;
    int e;
    static const char *const caches[] = { "none", "writeback", "writethrough", NULL };

    assert_int_equal(vd_opts_take_str(o, "name", "def", &str, &err), 0);
    assert_string_equal(str, "n1");
    free(str);
    /* consumed: second take gives the default */
    assert_int_equal(vd_opts_take_str(o, "name", "def", &str, &err), 0);
    assert_string_equal(str, "def");
    free(str);
    assert_int_equal(vd_opts_take_str(o, "name", NULL, &str, &err), 0);
    assert_null(str);

    assert_int_equal(vd_opts_take_bool(o, "ro", false, &b, &err), 0);
    assert_true(b);
    assert_int_equal(vd_opts_take_bool(o, "rw", true, &b, &err), 0);
    assert_false(b);
    assert_int_equal(vd_opts_take_bool(o, "absent", true, &b, &err), 0);
    assert_true(b);
    assert_int_equal(vd_opts_take_uint(o, "count", 0, &u, &err), 0);
    assert_int_equal(u, 16);
    assert_int_equal(vd_opts_take_int(o, "delta", 0, &i, &err), 0);
    assert_int_equal(i, -5);
    assert_int_equal(vd_opts_take_size(o, "cluster-size", 0, &u, &err), 0);
    assert_int_equal(u, 65536);
    assert_int_equal(vd_opts_take_size(o, "absent", 512, &u, &err), 0);
    assert_int_equal(u, 512);
    assert_int_equal(vd_opts_take_enum(o, "cache", caches, 0, &e, &err), 0);
    assert_int_equal(e, 1);
    assert_int_equal(vd_opts_take_enum(o, "absent", caches, 2, &e, &err), 0);
    assert_int_equal(e, 2);
    assert_null(err);

    /* dotted take; the emptied parent disappears, the rest is reported */
    assert_int_equal(vd_opts_take_str(o, "file.locking.mode", NULL, &str, &err), 0);
    assert_string_equal(str, "off");
    free(str);
    assert_null(vd_opts_lookup(o, "file.locking"));
    VdOpts *file = vd_opts_take_sub(o, "file");
    assert_non_null(file);
    assert_int_equal(vd_opts_check_empty(o, "Block format 'raw'", &err), 0);
    assert_null(err);
    assert_int_equal(vd_opts_take_str(file, "filename", NULL, &str, &err), 0);
    assert_string_equal(str, "x.img");
    free(str);
    assert_int_equal(vd_opts_check_empty(file, "Block protocol 'file'", &err), -EINVAL);
    assert_string_equal(err->msg, "Block protocol 'file' does not support the option 'aio'");
    vd_error_free_and_clear(&err);
    vd_json_unref(file);
    vd_json_unref(o);
}

static void test_take_json_types(void **state)
{
    VdOpts *o = parse_ok("json:{\"s\":512,\"b\":true,\"u\":18446744073709551615,\"i\":-3,"
                         "\"d\":4096.0,\"f\":1.5,\"neg\":-1,\"obj\":{\"x\":1},\"str\":\"1M\"}", NULL);
    VdError *err = NULL;
    uint64_t u;
    int64_t i;
    bool b;
    char *str;
    assert_int_equal(vd_opts_take_size(o, "s", 0, &u, &err), 0);
    assert_int_equal(u, 512);
    assert_int_equal(vd_opts_take_bool(o, "b", false, &b, &err), 0);
    assert_true(b);
    assert_int_equal(vd_opts_take_uint(o, "u", 0, &u, &err), 0);
    assert_true(u == UINT64_MAX);
    assert_int_equal(vd_opts_take_int(o, "i", 0, &i, &err), 0);
    assert_int_equal(i, -3);
    assert_int_equal(vd_opts_take_size(o, "d", 0, &u, &err), 0);
    assert_int_equal(u, 4096);
    assert_int_equal(vd_opts_take_size(o, "str", 0, &u, &err), 0);
    assert_int_equal(u, 1 << 20);
    assert_null(err);

    assert_int_equal(vd_opts_take_size(o, "f", 0, &u, &err), -EINVAL);
    assert_string_equal(err->msg, "Parameter 'f': invalid value '1.5': expected a size");
    vd_error_free_and_clear(&err);
    assert_int_equal(vd_opts_take_uint(o, "neg", 0, &u, &err), -EINVAL);
    assert_string_equal(err->msg,
                        "Parameter 'neg': invalid value '-1': expected a non-negative integer");
    vd_error_free_and_clear(&err);
    assert_int_equal(vd_opts_take_str(o, "obj", NULL, &str, &err), -EINVAL);
    assert_string_equal(err->msg, "Parameter 'obj': invalid value '{\"x\":1}': expected a string");
    vd_error_free_and_clear(&err);
    /* every key was consumed, also the bad ones */
    assert_int_equal(vd_opts_check_empty(o, "x", &err), 0);
    vd_json_unref(o);
}

/* JSON text that is not a json: filename (QMP arguments, --blockdev '{...}')
 * is typed as in QMP: a string is not a number, a number is not a string. */
static void test_take_typed(void **state)
{
    static const char *const json = "{\"size\":\"12\",\"ro\":\"on\",\"name\":5,\"n\":\"5\","
                                     "\"u\":\"7\",\"ok\":12,\"okb\":true,\"oks\":\"x\"}";
    VdOpts *o = parse_ok(json, NULL);
    VdError *err = NULL;
    uint64_t u;
    int64_t i;
    bool b;
    char *str;
    assert_int_equal(vd_opts_take_size(o, "size", 0, &u, &err), -EINVAL);
    assert_string_equal(err->msg, "Invalid parameter type for 'size', expected: integer");
    vd_error_free_and_clear(&err);
    assert_int_equal(vd_opts_take_bool(o, "ro", false, &b, &err), -EINVAL);
    assert_string_equal(err->msg, "Invalid parameter type for 'ro', expected: boolean");
    vd_error_free_and_clear(&err);
    assert_int_equal(vd_opts_take_str(o, "name", NULL, &str, &err), -EINVAL);
    assert_null(str);
    assert_string_equal(err->msg, "Invalid parameter type for 'name', expected: string");
    vd_error_free_and_clear(&err);
    assert_int_equal(vd_opts_take_int(o, "n", 0, &i, &err), -EINVAL);
    assert_string_equal(err->msg, "Invalid parameter type for 'n', expected: integer");
    vd_error_free_and_clear(&err);
    assert_int_equal(vd_opts_take_uint(o, "u", 0, &u, &err), -EINVAL);
    assert_string_equal(err->msg, "Invalid parameter type for 'u', expected: integer");
    vd_error_free_and_clear(&err);
    assert_int_equal(vd_opts_take_size(o, "ok", 0, &u, &err), 0);
    assert_int_equal(u, 12);
    assert_int_equal(vd_opts_take_bool(o, "okb", false, &b, &err), 0);
    assert_true(b);
    assert_int_equal(vd_opts_take_str(o, "oks", NULL, &str, &err), 0);
    assert_string_equal(str, "x");
    free(str);
    assert_null(err);
    vd_json_unref(o);

    /* the same as a json: filename is lenient, as QEMU's json: is */
    char lenient[512];
    snprintf(lenient, sizeof(lenient), "json:%s", json);
    o = parse_ok(lenient, NULL);
    assert_int_equal(vd_opts_take_size(o, "size", 0, &u, &err), 0);
    assert_int_equal(u, 12);
    assert_int_equal(vd_opts_take_bool(o, "ro", false, &b, &err), 0);
    assert_true(b);
    assert_int_equal(vd_opts_take_str(o, "name", NULL, &str, &err), 0);
    assert_string_equal(str, "5");
    free(str);
    assert_null(err);
    vd_json_unref(o);
}

static void test_take_errors(void **state)
{
    VdOpts *o = parse_ok("b=maybe,u=12x,u2=99999999999999999999,i=--1,i2=9223372036854775808,"
                         "s=1.5,s2=16E,s3=-1,e=fast", NULL);
    VdError *err = NULL;
    bool b;
    uint64_t u;
    int64_t i;
    int e;
    static const char *const names[] = { "none", "writeback", NULL };

    assert_int_equal(vd_opts_take_bool(o, "b", false, &b, &err), -EINVAL);
    assert_string_equal(err->msg, "Parameter 'b': invalid value 'maybe': expected 'on' or 'off'");
    vd_error_free_and_clear(&err);
    assert_int_equal(vd_opts_take_uint(o, "u", 0, &u, &err), -EINVAL);
    assert_non_null(strstr(err->msg, "'u': invalid value '12x'"));
    vd_error_free_and_clear(&err);
    assert_int_equal(vd_opts_take_uint(o, "u2", 0, &u, &err), -EINVAL);
    assert_non_null(strstr(err->msg, "number too large"));
    vd_error_free_and_clear(&err);
    assert_int_equal(vd_opts_take_int(o, "i", 0, &i, &err), -EINVAL);
    vd_error_free_and_clear(&err);
    assert_int_equal(vd_opts_take_int(o, "i2", 0, &i, &err), -EINVAL);
    assert_non_null(strstr(err->msg, "out of range"));
    vd_error_free_and_clear(&err);
    assert_int_equal(vd_opts_take_size(o, "s", 0, &u, &err), -EINVAL);
    assert_non_null(strstr(err->msg, "Parameter 's': invalid value '1.5': expected a size"));
    vd_error_free_and_clear(&err);
    assert_int_equal(vd_opts_take_size(o, "s2", 0, &u, &err), -EINVAL);
    assert_string_equal(err->msg, "Parameter 's2': invalid value '16E': size too large");
    vd_error_free_and_clear(&err);
    assert_int_equal(vd_opts_take_size(o, "s3", 0, &u, &err), -EINVAL);
    vd_error_free_and_clear(&err);
    assert_int_equal(vd_opts_take_enum(o, "e", names, 0, &e, &err), -EINVAL);
    assert_string_equal(err->msg,
                        "Parameter 'e': invalid value 'fast': expected one of 'none', 'writeback'");
    vd_error_free_and_clear(&err);
    vd_json_unref(o);
}

static void test_check_empty(void **state)
{
    VdError *err = NULL;
    VdOpts *o = parse_ok("foo=1", NULL);
    assert_int_equal(vd_opts_check_empty(o, "Block format 'raw'", &err), -EINVAL);
    assert_string_equal(err->msg, "Block format 'raw' does not support the option 'foo'");
    vd_error_free_and_clear(&err);
    vd_json_unref(o);

    o = parse_ok("file.cache.direct=on,z=1", NULL);
    assert_int_equal(vd_opts_check_empty(o, "Block format 'qcow2'", &err), -EINVAL);
    assert_string_equal(err->msg,
                        "Block format 'qcow2' does not support the option 'file.cache.direct'");
    vd_error_free_and_clear(&err);
    vd_json_unref(o);

    /* an empty subtree given explicitly is a leftover too */
    o = parse_ok("json:{\"file\":{}}", NULL);
    assert_int_equal(vd_opts_check_empty(o, "Block format 'raw'", &err), -EINVAL);
    assert_string_equal(err->msg, "Block format 'raw' does not support the option 'file'");
    vd_error_free_and_clear(&err);
    vd_json_unref(o);

    o = vd_json_object();
    assert_int_equal(vd_opts_check_empty(o, "x", &err), 0);
    assert_null(err);
    vd_json_unref(o);
}

static void test_take_sub(void **state)
{
    VdOpts *o = parse_ok("file.driver=file,file.filename=a,backing=node0", NULL);
    assert_null(vd_opts_take_sub(o, "backing"));    /* not an object: stays */
    assert_null(vd_opts_take_sub(o, "missing"));
    VdOpts *f = vd_opts_take_sub(o, "file");
    char *s = vd_json_to_string(f, false);
    assert_string_equal(s, "{\"driver\":\"file\",\"filename\":\"a\"}");
    free(s);
    s = vd_opts_to_string(o);
    assert_string_equal(s, "backing=node0");
    free(s);
    vd_json_unref(f);
    vd_json_unref(o);
}

typedef struct SizeCase {
    const char *str;
    int ret;
    uint64_t val;
} SizeCase;

/* Expectations checked against qemu-img 7.2 (qemu-img create -f raw x <size>). */
static const SizeCase g_size_cases[] = {
    { "0", 0, 0 },
    { "512", 0, 512 },
    { "64k", 0, 65536 },
    { "64K", 0, 65536 },
    { "1m", 0, 1048576 },
    { "1M", 0, 1048576 },
    { "1g", 0, 1073741824ULL },
    { "1.5G", 0, 1610612736ULL },
    { "1t", 0, 1099511627776ULL },
    { "1T", 0, 1099511627776ULL },
    { "1P", 0, 1125899906842624ULL },
    { "1p", 0, 1125899906842624ULL },
    { "1E", 0, 1152921504606846976ULL },
    { "7E", 0, 8070450532247928832ULL },
    { "1B", 0, 1 },
    { "1b", 0, 1 },
    { "1.k", 0, 1024 },
    { "1.0", 0, 1 },
    { "0.5k", 0, 512 },
    { "1.3333k", 0, 1365 },
    { "0x10", 0, 16 },
    { " 1", 0, 1 },
    { "18446744073709551615", 0, UINT64_MAX },
    { "15.99999999999999999999E", -ERANGE, 0 },   /* fraction rounds to 1.0 */
    { "0.99999999999999999999k", 0, 1024 },
    { "16E", -ERANGE, 0 },
    { "18446744073709551616", -ERANGE, 0 },
    { "99999999999999999999999k", -ERANGE, 0 },
    { "", -EINVAL, 0 },
    { "-1", -EINVAL, 0 },
    { "-0", -EINVAL, 0 },
    { "1e3", -EINVAL, 0 },
    { "1.5e3k", -EINVAL, 0 },
    { "1 k", -EINVAL, 0 },
    { "1k ", -EINVAL, 0 },
    { "1.5", -EINVAL, 0 },
    { "1.5b", -EINVAL, 0 },
    { "1kB", -EINVAL, 0 },
    { "1Z", -EINVAL, 0 },
    { "abc", -EINVAL, 0 },
    { "k", -EINVAL, 0 },
    { ".5k", -EINVAL, 0 },
    { "0x", -EINVAL, 0 },
    { "0x1.5", -EINVAL, 0 },
    { "1..5k", -EINVAL, 0 },
};

static void test_parse_size(void **state)
{
    for (size_t k = 0; k < VD_ARRAY_SIZE(g_size_cases); k++) {
        const SizeCase *c = &g_size_cases[k];
        uint64_t v = 12345;
        int ret = vd_parse_size(c->str, &v);
        if (ret != c->ret || (ret == 0 && v != c->val)) {
            fail_msg("size '%s': got %d/%llu, want %d/%llu", c->str, ret,
                     (unsigned long long)v, c->ret, (unsigned long long)c->val);
        }
        if (ret < 0) {
            assert_int_equal(v, 12345);   /* untouched on error */
        }
    }
    assert_int_equal(vd_parse_size(NULL, NULL), -EINVAL);
}

static void test_parse_numbers(void **state)
{
    uint64_t u;
    int64_t i;
    bool b;
    assert_int_equal(vd_parse_uint("0", &u), 0);
    assert_int_equal(u, 0);
    assert_int_equal(vd_parse_uint("0x1F", &u), 0);
    assert_int_equal(u, 31);
    assert_int_equal(vd_parse_uint("007", &u), 0);
    assert_int_equal(u, 7);
    assert_int_equal(vd_parse_uint("18446744073709551615", &u), 0);
    assert_true(u == UINT64_MAX);
    assert_int_equal(vd_parse_uint("18446744073709551616", &u), -ERANGE);
    assert_int_equal(vd_parse_uint("-1", &u), -EINVAL);
    assert_int_equal(vd_parse_uint("+1", &u), -EINVAL);
    assert_int_equal(vd_parse_uint(" 1", &u), -EINVAL);
    assert_int_equal(vd_parse_uint("1 ", &u), -EINVAL);
    assert_int_equal(vd_parse_uint("", &u), -EINVAL);
    assert_int_equal(vd_parse_uint("0x", &u), -EINVAL);
    assert_int_equal(vd_parse_uint("1k", &u), -EINVAL);
    assert_int_equal(vd_parse_int("-9223372036854775808", &i), 0);
    assert_true(i == INT64_MIN);
    assert_int_equal(vd_parse_int("9223372036854775807", &i), 0);
    assert_true(i == INT64_MAX);
    assert_int_equal(vd_parse_int("9223372036854775808", &i), -ERANGE);
    assert_int_equal(vd_parse_int("-9223372036854775809", &i), -ERANGE);
    assert_int_equal(vd_parse_int("-0x10", &i), 0);
    assert_int_equal(i, -16);
    assert_int_equal(vd_parse_int("-", &i), -EINVAL);
    assert_int_equal(vd_parse_int("--1", &i), -EINVAL);
    const char *yes[] = { "on", "yes", "true", "y" };
    const char *no[] = { "off", "no", "false", "n" };
    for (int k = 0; k < 4; k++) {
        b = false;
        assert_int_equal(vd_parse_bool(yes[k], &b), 0);
        assert_true(b);
        assert_int_equal(vd_parse_bool(no[k], &b), 0);
        assert_false(b);
    }
    assert_int_equal(vd_parse_bool("ON", &b), -EINVAL);
    assert_int_equal(vd_parse_bool("1", &b), -EINVAL);
    assert_int_equal(vd_parse_bool("", &b), -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        TEST("/util/opts/parse", test_parse),
        TEST("/util/opts/parse/errors", test_parse_errors),
        TEST("/util/opts/to-string", test_to_string),
        TEST("/util/opts/set-lookup", test_set_lookup),
        TEST("/util/opts/take", test_take),
        TEST("/util/opts/take/json-types", test_take_json_types),
        TEST("/util/opts/take/typed-json", test_take_typed),
        TEST("/util/opts/take/errors", test_take_errors),
        TEST("/util/opts/take/sub", test_take_sub),
        TEST("/util/opts/check-empty", test_check_empty),
        TEST("/util/opts/size", test_parse_size),
        TEST("/util/opts/numbers", test_parse_numbers),
    };
    return cmocka_run_group_tests_name("util-opts", tests, NULL, NULL);
}
