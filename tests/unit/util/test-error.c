/*
 * Unit tests for src/util/error.c (error objects, reporting) and
 * src/util/log.c (category list parsing, trace output).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "vdisk/error.h"
#include "vdisk/log.h"

#define TEST(path, fn) { path, fn, NULL, NULL, NULL }

/* Run fn with stderr redirected to a temp file; return what it printed. */
static char *capture_stderr(void (*fn)(void *), void *opaque)
{
    FILE *tmp = tmpfile();
    assert_non_null(tmp);
    fflush(stderr);
    int saved = dup(STDERR_FILENO);
    dup2(fileno(tmp), STDERR_FILENO);
    fn(opaque);
    fflush(stderr);
    dup2(saved, STDERR_FILENO);
    close(saved);
    off_t n = lseek(fileno(tmp), 0, SEEK_END);
    char *buf = calloc(1, (size_t)n + 1);
    assert_int_equal(pread(fileno(tmp), buf, (size_t)n, 0), n);
    fclose(tmp);
    return buf;
}

static void test_setg(void **state)
{
    VdError *err = NULL;
    vd_error_setg(&err, EINVAL, "a.qcow2: field %s value %d", "l1_size", 42);
    assert_non_null(err);
    assert_int_equal(err->code, EINVAL);
    assert_string_equal(err->msg, "a.qcow2: field l1_size value 42");
    vd_error_free(err);

    /* negative codes are negated */
    err = NULL;
    vd_error_setg(&err, -EIO, "x");
    assert_int_equal(err->code, EIO);
    vd_error_free(err);

    /* NULL errp is fine */
    vd_error_setg(NULL, EINVAL, "ignored");
}

static void test_set_once(void **state)
{
    VdError *err = NULL;
    vd_error_setg(&err, EINVAL, "first");
    vd_error_setg(&err, EIO, "second");
    vd_error_setg_errno(&err, ENOSPC, "third");
    assert_int_equal(err->code, EINVAL);
    assert_string_equal(err->msg, "first");
    vd_error_free_and_clear(&err);
    assert_null(err);
    vd_error_free_and_clear(&err);   /* harmless on NULL */
    vd_error_free(NULL);
}

static void test_setg_errno(void **state)
{
    VdError *err = NULL;
    vd_error_setg_errno(&err, -ENOENT, "Could not open '%s'", "x.img");
    assert_int_equal(err->code, ENOENT);
    char expect[256];
    snprintf(expect, sizeof(expect), "Could not open 'x.img': %s", strerror(ENOENT));
    assert_string_equal(err->msg, expect);
    vd_error_free(err);
}

static void test_prepend(void **state)
{
    VdError *err = NULL;
    vd_error_prepend(&err, "nothing: ");   /* no error: no-op */
    assert_null(err);
    vd_error_prepend(NULL, "nothing: ");
    vd_error_setg(&err, EINVAL, "bad value");
    vd_error_prepend(&err, "%s: ", "disk.qcow2");
    vd_error_prepend(&err, "open: ");
    assert_string_equal(err->msg, "open: disk.qcow2: bad value");
    assert_int_equal(err->code, EINVAL);
    vd_error_free(err);
}

static void test_propagate(void **state)
{
    VdError *dst = NULL, *src = NULL;
    vd_error_propagate(&dst, NULL);
    assert_null(dst);

    vd_error_setg(&src, EIO, "one");
    vd_error_propagate(&dst, src);
    assert_ptr_equal(dst, src);

    /* dst already set: src is freed (ASan would report a leak otherwise) */
    src = NULL;
    vd_error_setg(&src, EINVAL, "two");
    vd_error_propagate(&dst, src);
    assert_string_equal(dst->msg, "one");

    /* NULL destination: src is freed */
    src = NULL;
    vd_error_setg(&src, EINVAL, "three");
    vd_error_propagate(NULL, src);
    vd_error_free(dst);
}

static void report_err_fn(void *opaque)
{
    VdError *err = opaque;
    vd_error_report_err("vdisk-img", err);
    vd_error_report_err(NULL, err);
}

static void report_fn(void *opaque)
{
    vd_error_report("cannot %s", "open");
    vd_warn_report("careful %d", 1);
}

static void test_report(void **state)
{
    VdError *err = NULL;
    vd_error_setg(&err, EINVAL, "Image is corrupt");
    char *out = capture_stderr(report_err_fn, err);
    assert_string_equal(out, "vdisk-img: Image is corrupt\nImage is corrupt\n");
    free(out);
    vd_error_free(err);

    vd_error_set_progname("/usr/bin/vdisk-io");
    assert_string_equal(vd_error_get_progname(), "vdisk-io");
    out = capture_stderr(report_fn, NULL);
    assert_string_equal(out, "vdisk-io: cannot open\nvdisk-io: warning: careful 1\n");
    free(out);

    vd_error_set_progname(NULL);
    assert_null(vd_error_get_progname());
    out = capture_stderr(report_fn, NULL);
    assert_string_equal(out, "cannot open\nwarning: careful 1\n");
    free(out);
}

static void test_log_enable(void **state)
{
    g_vd_log_mask = 0;
    assert_int_equal(vd_log_enable("aio,qcow2"), 0);
    assert_int_equal(g_vd_log_mask, VD_LOG_AIO | VD_LOG_QCOW2);
    /* unknown name: error, mask unchanged */
    assert_int_equal(vd_log_enable("nbd,bogus"), -EINVAL);
    assert_int_equal(g_vd_log_mask, VD_LOG_AIO | VD_LOG_QCOW2);
    assert_int_equal(vd_log_enable("none"), 0);
    assert_int_equal(g_vd_log_mask, 0);
    assert_int_equal(vd_log_enable("all"), 0);
    assert_true(g_vd_log_mask & VD_LOG_TOOLS);
    assert_true(g_vd_log_mask & VD_LOG_AIO);
    assert_true(g_vd_log_mask & VD_LOG_MONITOR);
    assert_int_equal(vd_log_enable("none,,nbd,"), 0);
    assert_int_equal(g_vd_log_mask, VD_LOG_NBD);
    g_vd_log_mask = 0;
}

static void trace_fn(void *opaque)
{
    VD_TRACE(VD_LOG_QCOW2, "l2 miss at %d", 7);
    VD_TRACE(VD_LOG_NBD, "must not appear");
}

static void test_log_trace(void **state)
{
    g_vd_log_mask = 0;
    assert_int_equal(vd_log_enable("qcow2"), 0);
    char *out = capture_stderr(trace_fn, NULL);
    assert_non_null(strstr(out, "qcow2: l2 miss at 7\n"));
    assert_null(strstr(out, "must not appear"));
    free(out);
    g_vd_log_mask = 0;
    out = capture_stderr(trace_fn, NULL);
    assert_string_equal(out, "");
    free(out);
}

/* Child mode: the log constructor has read VDISK_TRACE(_FILE) at start-up. */
static int trace_child(void)
{
    vd_log_init();   /* idempotent */
    VD_TRACE(VD_LOG_NBD, "hello %d", 5);
    VD_TRACE(VD_LOG_QCOW2, "not enabled");
    return 0;
}

/* Run this binary again with the environment set; return what the trace
 * file holds. */
static char *run_trace_child(const char *trace, char **stderr_out)
{
    char path[] = "/tmp/vdisk-test-trace-XXXXXX";
    char errpath[] = "/tmp/vdisk-test-trace-err-XXXXXX";
    int fd = mkstemp(path);
    int efd = mkstemp(errpath);
    assert_true(fd >= 0 && efd >= 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        setenv("VDISK_TRACE", trace, 1);
        setenv("VDISK_TRACE_FILE", path, 1);
        dup2(efd, STDERR_FILENO);
        execl("/proc/self/exe", "test-error", "--trace-child", (char *)NULL);
        _exit(127);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    char *bufs[2];
    int fds[2] = { fd, efd };
    for (int i = 0; i < 2; i++) {
        off_t n = lseek(fds[i], 0, SEEK_END);
        bufs[i] = calloc(1, (size_t)n + 1);
        assert_int_equal(pread(fds[i], bufs[i], (size_t)n, 0), n);
        close(fds[i]);
    }
    unlink(path);
    unlink(errpath);
    *stderr_out = bufs[1];
    return bufs[0];
}

static void test_log_env(void **state)
{
    char *err;
    char *out = run_trace_child("nbd", &err);
    assert_non_null(strstr(out, "nbd: hello 5\n"));
    assert_null(strstr(out, "not enabled"));
    assert_string_equal(err, "");
    free(out);
    free(err);

    out = run_trace_child("nbd,bogus", &err);
    assert_string_equal(out, "");
    assert_non_null(strstr(err, "VDISK_TRACE='nbd,bogus' names an unknown category"));
    free(out);
    free(err);
}

int main(int argc, char **argv)
{
    if (argc > 1 && !strcmp(argv[1], "--trace-child")) {
        return trace_child();
    }

    const struct CMUnitTest tests[] = {
        TEST("/util/error/setg", test_setg),
        TEST("/util/error/set-once", test_set_once),
        TEST("/util/error/setg-errno", test_setg_errno),
        TEST("/util/error/prepend", test_prepend),
        TEST("/util/error/propagate", test_propagate),
        TEST("/util/error/report", test_report),
        TEST("/util/log/enable", test_log_enable),
        TEST("/util/log/trace", test_log_trace),
        TEST("/util/log/env", test_log_env),
    };
    return cmocka_run_group_tests_name("util-error", tests, NULL, NULL);
}
