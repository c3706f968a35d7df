/*
 * fuzz_check: what the fuzzers that test invariants of the code under test
 * (not only "does not crash") use to say which one broke.
 */
#ifndef VDISK_FUZZ_CHECK_H
#define VDISK_FUZZ_CHECK_H

#include <stdio.h>
#include <stdlib.h>

/* An invariant of the code under test broke: say which, then crash. */
#define fuzz_check(cond)                                                    \
    do {                                                                    \
        if (!(cond)) {                                                      \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, \
                    #cond);                                                 \
            abort();                                                        \
        }                                                                   \
    } while (0)

#endif
