/*
 * Driver that runs a libFuzzer target without libFuzzer, for the
 * fuzz-smoke suite: every corpus file, then deterministic mutations of it.
 *
 *   fuzz-<name>-smoke [-runs=N] [DIR-or-FILE...]
 *   -runs=N                   mutations per input (default 2000)
 *   VDISK_FUZZ_ITERATIONS=N   the same, overriding -runs
 *   VDISK_FUZZ_SAVE=path      write each input there before running it, so
 *                             after a crash the file holds the culprit
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

#define FUZZ_MAX_INPUT (1 << 20)
#define VD_FUZZ_MIN(a, b) ((a) < (b) ? (a) : (b))

typedef struct Input {
    char *name;
    uint8_t *data;
    size_t size;
} Input;

static Input *g_inputs;
static size_t g_ninputs;
static const char *g_save_path;

static uint64_t g_rng;

/* xorshift64*: small, fast and the same on every machine. */
static uint64_t rng_next(void)
{
    g_rng ^= g_rng >> 12;
    g_rng ^= g_rng << 25;
    g_rng ^= g_rng >> 27;
    return g_rng * 2685821657736338717ULL;
}

static size_t rng_below(size_t n)
{
    return n ? (size_t)(rng_next() % n) : 0;
}

static void add_input(const char *name, uint8_t *data, size_t size)
{
    Input *in = realloc(g_inputs, (g_ninputs + 1) * sizeof(Input));
    if (!in) {
        abort();
    }
    g_inputs = in;
    g_inputs[g_ninputs].name = strdup(name);
    g_inputs[g_ninputs].data = data;
    g_inputs[g_ninputs].size = size;
    g_ninputs++;
}

static void load_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "fuzz: cannot open %s: %s\n", path, strerror(errno));
        exit(1);
    }
    uint8_t *buf = malloc(FUZZ_MAX_INPUT);
    if (!buf) {
        abort();
    }
    size_t n = fread(buf, 1, FUZZ_MAX_INPUT, f);
    fclose(f);
    add_input(path, buf, n);
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Files of a directory in name order (so runs are reproducible). */
static void load_path(const char *path)
{
    struct stat st;
    if (stat(path, &st) < 0) {
        return;   /* no corpus for this target: random inputs are used */
    }
    if (!S_ISDIR(st.st_mode)) {
        load_file(path);
        return;
    }
    DIR *d = opendir(path);
    if (!d) {
        return;
    }
    char **names = NULL;
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') {
            continue;
        }
        names = realloc(names, (n + 1) * sizeof(char *));
        if (!names || asprintf(&names[n], "%s/%s", path, e->d_name) < 0) {
            abort();
        }
        n++;
    }
    closedir(d);
    qsort(names, n, sizeof(char *), cmp_names);
    for (size_t i = 0; i < n; i++) {
        if (stat(names[i], &st) == 0 && S_ISREG(st.st_mode)) {
            load_file(names[i]);
        }
        free(names[i]);
    }
    free(names);
}

static void run_one(const uint8_t *data, size_t size)
{
    if (g_save_path) {
        int fd = open(g_save_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            if (write(fd, data, size) != (ssize_t)size) {
                perror("fuzz: VDISK_FUZZ_SAVE");
            }
            close(fd);
        }
    }
    /* A private copy of exactly size bytes, so ASan catches over-reads. */
    uint8_t *copy = malloc(size ? size : 1);
    if (!copy) {
        abort();
    }
    memcpy(copy, data, size);
    LLVMFuzzerTestOneInput(copy, size);
    free(copy);
}

static const uint8_t g_interesting[] = { 0x00, 0x01, 0x7f, 0x80, 0xff, '{', '}', '[', ']', '"',
                                         ',', '=', '.', ':', '\\', '0', '9', 'e', '-' };

/* Apply 1..4 random edits to buf (size *len, capacity cap). */
static void mutate(uint8_t *buf, size_t *len, size_t cap)
{
    int nedits = 1 + (int)rng_below(4);
    for (int k = 0; k < nedits; k++) {
        size_t n = *len;
        switch (rng_below(7)) {
        case 0: /* bit flip */
            if (n) {
                buf[rng_below(n)] ^= (uint8_t)(1u << rng_below(8));
            }
            break;
        case 1: /* set a byte to an interesting or random value */
            if (n) {
                buf[rng_below(n)] = rng_below(2) ? g_interesting[rng_below(sizeof(g_interesting))]
                                                 : (uint8_t)rng_next();
            }
            break;
        case 2: /* truncate */
            *len = rng_below(n + 1);
            break;
        case 3: { /* insert random bytes */
            size_t add = 1 + rng_below(8);
            if (n + add > cap) {
                break;
            }
            size_t at = rng_below(n + 1);
            memmove(buf + at + add, buf + at, n - at);
            for (size_t i = 0; i < add; i++) {
                buf[at + i] = rng_below(2) ? g_interesting[rng_below(sizeof(g_interesting))]
                                           : (uint8_t)rng_next();
            }
            *len = n + add;
            break;
        }
        case 4: { /* delete a range */
            if (!n) {
                break;
            }
            size_t at = rng_below(n);
            size_t del = 1 + rng_below(VD_FUZZ_MIN(n - at, 16));
            memmove(buf + at, buf + at + del, n - at - del);
            *len = n - del;
            break;
        }
        case 5: { /* duplicate a chunk of the input somewhere else */
            if (!n) {
                break;
            }
            size_t from = rng_below(n);
            size_t cnt = 1 + rng_below(VD_FUZZ_MIN(n - from, 64));
            if (n + cnt > cap) {
                break;
            }
            size_t at = rng_below(n + 1);
            uint8_t tmp[64];
            memcpy(tmp, buf + from, cnt);
            memmove(buf + at + cnt, buf + at, n - at);
            memcpy(buf + at, tmp, cnt);
            *len = n + cnt;
            break;
        }
        default: /* overwrite a little-endian 32-bit field with an edge value */
            if (n >= 4) {
                static const uint32_t edge[] = { 0, 1, 0x7fffffff, 0x80000000, 0xffffffff,
                                                 0x10000, 0x200 };
                uint32_t v = edge[rng_below(sizeof(edge) / sizeof(edge[0]))];
                size_t at = rng_below(n - 3);
                memcpy(buf + at, &v, 4);
            }
            break;
        }
    }
}

int main(int argc, char **argv)
{
    const char *prog = strrchr(argv[0], '/') ? strrchr(argv[0], '/') + 1 : argv[0];
    long iterations = 2000;
    for (int i = 1; i < argc; i++) {
        if (!strncmp(argv[i], "-runs=", 6)) {
            char *end;
            iterations = strtol(argv[i] + 6, &end, 10);
            if (*end || iterations < 0) {
                fprintf(stderr, "%s: bad %s\n", prog, argv[i]);
                return 1;
            }
        }
    }
    const char *env = getenv("VDISK_FUZZ_ITERATIONS");
    if (env && *env) {
        char *end;
        iterations = strtol(env, &end, 10);
        if (*end || iterations < 0) {
            fprintf(stderr, "%s: bad VDISK_FUZZ_ITERATIONS '%s'\n", prog, env);
            return 1;
        }
    }
    g_save_path = getenv("VDISK_FUZZ_SAVE");
    if (LLVMFuzzerInitialize) {
        LLVMFuzzerInitialize(&argc, &argv);
    }
    for (int i = 1; i < argc; i++) {
        if (argv[i][0] != '-') {
            load_path(argv[i]);
        }
    }

    unsigned long runs = 0;
    if (g_ninputs == 0) {
        /* No corpus: random inputs of random length. */
        g_rng = 0x9e3779b97f4a7c15ULL;
        uint8_t *buf = malloc(4096);
        for (long it = 0; it < iterations; it++) {
            size_t len = rng_below(4097);
            for (size_t k = 0; k < len; k++) {
                buf[k] = (uint8_t)rng_next();
            }
            run_one(buf, len);
            runs++;
        }
        free(buf);
    }
    for (size_t i = 0; i < g_ninputs; i++) {
        Input *in = &g_inputs[i];
        run_one(in->data, in->size);
        runs++;
        size_t cap = in->size * 2 + 256;
        uint8_t *buf = malloc(cap);
        if (!buf) {
            abort();
        }
        /* Fixed seed per input position: a failing run is reproducible. */
        g_rng = 0x9e3779b97f4a7c15ULL ^ ((uint64_t)(i + 1) * 0x2545f4914f6cdd1dULL);
        for (long it = 0; it < iterations; it++) {
            size_t len = in->size;
            memcpy(buf, in->data, len);
            mutate(buf, &len, cap);
            run_one(buf, len);
            runs++;
        }
        free(buf);
        free(in->data);
        free(in->name);
    }
    free(g_inputs);
    printf("%s: %zu corpus inputs, %lu runs, no crash\n", prog, g_ninputs, runs);
    return 0;
}
