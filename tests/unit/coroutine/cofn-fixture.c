/*
 * Input for scripts/check-coroutine-fn.py's own test (not compiled into
 * anything): each call marked BAD must be reported, each marked OK must not.
 */
#include "vdisk/common.h"

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
