/*
 * Input for scripts/check-coroutine-fn.py's own test (not compiled into
 * anything): each line marked BAD must be reported, each marked OK must not
 * (a call, or a coroutine_fn definition whose body does not start with
 * VD_CO_ASSERT();).
 */
#include "vdisk/coroutine.h"

typedef void coroutine_fn FixtureEntry(void *opaque);

struct fixture_driver {
    int coroutine_fn (*co_read)(void *opaque);
    int (*plain_read)(void *opaque);
};

int coroutine_fn fixture_co_read(void *opaque);
int no_coroutine_fn fixture_run_loop(void *opaque);
int fixture_plain(void *opaque);

int coroutine_fn fixture_co_ok(struct fixture_driver *d, FixtureEntry *e, void *p)
{
    VD_CO_ASSERT();
    e(p);                            /* OK: coroutine_fn calls a coroutine entry */
    fixture_plain(p);                /* OK */
    fixture_run_loop(p);             /* BAD: nested loop inside a coroutine */
    return d->co_read(p) + fixture_co_read(p);   /* OK */
}

int fixture_not_co(struct fixture_driver *d, FixtureEntry *e, void *p)
{
    e(p);                            /* BAD: through a coroutine_fn typedef */
    d->plain_read(p);                /* OK */
    fixture_run_loop(p);             /* OK */
    return d->co_read(p)             /* BAD: through a coroutine_fn field */
           + fixture_co_read(p);     /* BAD: direct */
}

int coroutine_mixed_fn fixture_mixed(struct fixture_driver *d, void *p)
{
    return fixture_co_read(p) + fixture_run_loop(p);   /* OK: mixed may do both */
}

int coroutine_fn fixture_co_no_assert(void *p)      /* BAD: no VD_CO_ASSERT(); */
{
    return fixture_plain(p);
}

int coroutine_fn fixture_co_assert_late(void *p)    /* BAD: not the first statement */
{
    int r = fixture_plain(p);
    VD_CO_ASSERT();
    return r;
}

int coroutine_fn fixture_co_assert_after_comment(void *p)   /* OK */
{
    /* a comment and a preprocessor line may come first */
#ifdef FIXTURE_UNDEFINED
#endif
    VD_CO_ASSERT();
    return fixture_plain(p);
}

int coroutine_fn fixture_co_one_line(void *p) { VD_CO_ASSERT(); return fixture_plain(p); }   /* OK */

static int coroutine_fn fixture_co_static(void *p)  /* BAD: static ones too */
{
    return fixture_plain(p);
}

int fixture_plain_no_assert(void *p)                /* OK: not coroutine_fn */
{
    return fixture_co_static != NULL && fixture_plain(p);
}
