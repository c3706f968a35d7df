/*
 * Unit tests of the NBD client's filename and option parsing
 * (src/protocols/nbd/nbd-uri.c): every QEMU form gives the right options and
 * the name QEMU would print, and every malformed name a clear error.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "protocols/nbd/nbd.h"

/* Parse filename, take the address back out, name it; NULL + *err on error. */
static char *roundtrip(const char *filename, char **err)
{
    VdOpts *o = vd_json_object();
    VdError *e = NULL;
    NbdAddress a = { 0 };
    char *name = NULL;
    *err = NULL;
    if (nbd_parse_filename(filename, o, &e) == 0 && nbd_take_address(o, &a, &e) == 0) {
        assert_int_equal(vd_json_object_size(o), 0);   /* everything consumed */
        name = malloc(4096);
        nbd_address_to_filename(&a, name, 4096);
    }
    if (e) {
        *err = strdup(e->msg);
        vd_error_free(e);
    }
    nbd_address_free(&a);
    vd_json_unref(o);
    return name;
}

static void expect_name(const char *filename, const char *want)
{
    char *err;
    char *got = roundtrip(filename, &err);
    if (!got) {
        fail_msg("%s: %s", filename, err);
    }
    assert_string_equal(got, want);
    free(got);
}

static void expect_error(const char *filename, const char *want)
{
    char *err;
    char *got = roundtrip(filename, &err);
    if (got) {
        fail_msg("%s: accepted as %s", filename, got);
    }
    assert_non_null(err);
    if (!strstr(err, want)) {
        fail_msg("%s: error '%s' lacks '%s'", filename, err, want);
    }
    free(err);
}

static void test_uri_forms(void **state)
{
    expect_name("nbd://localhost/disk", "nbd://localhost:10809/disk");
    expect_name("nbd://127.0.0.1:1234/disk", "nbd://127.0.0.1:1234/disk");
    expect_name("nbd+tcp://h:9/", "nbd://h:9");
    expect_name("nbd://h", "nbd://h:10809");
    expect_name("nbd://[::1]:77/x", "nbd://[::1]:77/x");
    expect_name("nbd://h/a%2Fb%20c", "nbd://h:10809/a/b c");
    expect_name("nbd+unix:///disk?socket=/tmp/s.sock", "nbd+unix:///disk?socket=/tmp/s.sock");
    expect_name("nbd+unix://?socket=/tmp/s", "nbd+unix://?socket=/tmp/s");
    expect_name("nbd+unix:///e?socket=/tmp/a%20b", "nbd+unix:///e?socket=/tmp/a b");
}

static void test_legacy_forms(void **state)
{
    expect_name("nbd:h:10810", "nbd://h:10810");
    expect_name("nbd:h:10810:exportname=x", "nbd://h:10810/x");
    expect_name("nbd:unix:/tmp/s", "nbd+unix://?socket=/tmp/s");
    expect_name("nbd:unix:/tmp/s:exportname=e", "nbd+unix:///e?socket=/tmp/s");
}

static void test_bad_names(void **state)
{
    expect_error("nbd://", "needs a host");
    expect_error("nbd://:5/x", "needs a host");
    expect_error("nbd://h:0/x", "bad port");
    expect_error("nbd://h:65536/x", "bad port");
    expect_error("nbd://h:12ab/x", "bad port");
    expect_error("nbd://[::1/x", "unterminated");
    expect_error("nbd://[::1]x/y", "junk after");
    expect_error("nbd://u@h/x", "user names");
    expect_error("nbd://h/x#frag", "fragment");
    expect_error("nbd://h/x?socket=/s", "no query");
    expect_error("nbd+unix:///x", "socket=PATH");
    expect_error("nbd+unix:///x?socket=", "empty socket");
    expect_error("nbd+unix:///x?sock=/s", "socket=PATH");
    expect_error("nbd+unix:///x?socket=/s&y=1", "socket=PATH");
    expect_error("nbd+unix://h/x?socket=/s", "take no host");
    expect_error("nbd+ssh://h/x", "unknown NBD URI scheme");
    expect_error("nbd://h/%zz", "percent-escape");
    expect_error("nbd://h/%00", "percent-escape");
    expect_error("nbd://h/%4", "percent-escape");
    expect_error("nbd:h", "nbd:HOST:PORT");
    expect_error("nbd:h:99999", "nbd:HOST:PORT");
    expect_error("nbd:unix:", "empty socket");
    expect_error("nbd:h:1:exportname=", "empty exportname");
    char longsock[200] = "nbd+unix:///x?socket=/";
    memset(longsock + strlen(longsock), 'a', 150);
    expect_error(longsock, "too long");
}

static void test_options(void **state)
{
    VdError *e = NULL;
    NbdAddress a = { 0 };
    VdOpts *o = vd_opts_parse("server.type=unix,server.path=/s,export=e", NULL, &e);
    assert_non_null(o);
    assert_int_equal(nbd_take_address(o, &a, &e), 0);
    assert_true(a.is_unix);
    assert_string_equal(a.path, "/s");
    assert_string_equal(a.export, "e");
    nbd_address_free(&a);
    vd_json_unref(o);

    static const char *const bad[][2] = {
        { "server.type=inet", "server.host is needed" },
        { "server.type=unix", "server.path is needed" },
        { "server.type=tcp,server.host=h", "server.type" },
        { "server.type=unix,server.path=/s,server.port=1", "do not apply" },
        { "server.type=inet,server.host=h,server.path=/s", "does not apply" },
        { "server.type=inet,server.host=h,server.port=0", "bad server.port" },
        { "server.type=inet,server.host=h,server.bogus=1", "under 'server'" },
        { "host=h,path=/s", "at the same time" },
        { "host=h,server.type=inet", "legacy" },
        { "export=e", "no server given" },
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        memset(&a, 0, sizeof(a));
        o = vd_opts_parse(bad[i][0], NULL, &e);
        assert_non_null(o);
        assert_int_equal(nbd_take_address(o, &a, &e), -EINVAL);
        assert_non_null(e);
        if (!strstr(e->msg, bad[i][1])) {
            fail_msg("%s: '%s' lacks '%s'", bad[i][0], e->msg, bad[i][1]);
        }
        vd_error_free(e);
        e = NULL;
        nbd_address_free(&a);
        vd_json_unref(o);
    }
    /* a filename plus server options is refused */
    o = vd_opts_parse("export=x", NULL, &e);
    assert_int_equal(nbd_parse_filename("nbd://h/y", o, &e), -EINVAL);
    vd_error_free(e);
    vd_json_unref(o);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_uri_forms),
        cmocka_unit_test(test_legacy_forms),
        cmocka_unit_test(test_bad_names),
        cmocka_unit_test(test_options),
    };
    return cmocka_run_group_tests_name("/protocols/nbd/uri", tests, NULL, NULL);
}
