/*
 * What the image-format fuzzers share: the input is a list of patches
 * (offset hi, offset lo, length, bytes...) applied to a small valid image
 * the fuzzer builds, optionally written as text ("hex:" followed by hex
 * digits) so that seed corpora stay readable. The patched image lives in a
 * memfd opened through /proc/self/fd and is handed to the fuzzer's exercise
 * function once read-only and once read-write. VDISK_FUZZ_DUMP=path keeps
 * the last image for debugging. Header-only: included by one fuzzer each.
 */
#ifndef VDISK_FUZZ_IMAGE_H
#define VDISK_FUZZ_IMAGE_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "vdisk/block.h"

/* Hex digits in in[0..n) (anything else skipped) into out; returns bytes. */
static size_t fuzz_decode_hex(const uint8_t *in, size_t n, uint8_t *out, size_t max)
{
    size_t o = 0;
    int hi = -1;
    for (size_t i = 0; i < n && o < max; i++) {
        int c = in[i], v;
        if (c >= '0' && c <= '9') {
            v = c - '0';
        } else if (c >= 'a' && c <= 'f') {
            v = c - 'a' + 10;
        } else if (c >= 'A' && c <= 'F') {
            v = c - 'A' + 10;
        } else {
            continue;
        }
        if (hi < 0) {
            hi = v;
        } else {
            out[o++] = (uint8_t)(hi << 4 | v);
            hi = -1;
        }
    }
    return o;
}

static void fuzz_apply_patches(uint8_t *img, size_t img_size, const uint8_t *p, size_t n)
{
    size_t i = 0;
    while (i + 3 <= n) {
        size_t off = ((size_t)p[i] << 8 | p[i + 1]) % img_size;
        size_t len = p[i + 2];
        i += 3;
        for (size_t k = 0; k < len && i < n; k++, i++) {
            img[(off + k) % img_size] = p[i];
        }
    }
}

/* What exercise does with an opened image: read it, and when writable
 * write at a few places, write zeros, maybe discard, flush and check. */
typedef struct FuzzWrite {
    int64_t offset;        /* used when the image is longer than min_len, else 0 */
    int64_t min_len;
    int64_t bytes;         /* at most the image's length */
} FuzzWrite;

static void fuzz_image_exercise(const char *opts_str, const char *path, int flags,
                                const FuzzWrite *writes, int nwrites, int64_t zero_bytes,
                                int64_t discard_bytes)
{
    VdOpts *o = vd_opts_parse(opts_str, NULL, NULL);
    VdError *err = NULL;
    VdBackend *b = vd_backend_open(path, o, flags | VD_O_NO_BACKING, &err);
    if (!b) {
        vd_error_free(err);
        return;
    }
    static uint8_t buf[64 * 1024];
    int64_t len = vd_backend_getlength(b);
    if (len > 0) {
        vd_backend_pread(b, 0, VD_MIN(len, (int64_t)sizeof(buf)), buf, 0);
        vd_backend_pread(b, len / 2, VD_MIN(len - len / 2, 4096), buf, 0);
    }
    if ((flags & VD_O_RDWR) && len > 0) {
        memset(buf, 0x11, 8192);
        for (int i = 0; i < nwrites; i++) {
            int64_t off = len > writes[i].min_len ? writes[i].offset : 0;
            vd_backend_pwrite(b, off, VD_MIN(len, writes[i].bytes), buf, 0);
        }
        vd_backend_pwrite_zeroes(b, 0, VD_MIN(len, zero_bytes), VD_REQ_MAY_UNMAP);
        if (discard_bytes) {
            vd_backend_pdiscard(b, 0, VD_MIN(len, discard_bytes));
        }
        vd_backend_flush(b);
        VdCheckResult res;
        memset(&res, 0, sizeof(res));
        vd_node_check(vd_backend_node(b), &res, 0, &err);
        vd_error_free(err);
    }
    vd_backend_unref(b);
}

/* One fuzz input: the template (img_size bytes, made by build_template on
 * the first call, when the block layer is set up too) patched by data,
 * written to a memfd, then exercise(path, 0) and exercise(path, VD_O_RDWR). */
static int fuzz_image_run(const char *name, const uint8_t *data, size_t size, size_t img_size,
                          void (*build_template)(uint8_t *img),
                          void (*exercise)(const char *path, int flags))
{
    static uint8_t *template;
    if (!template) {
        if (vd_block_init(NULL) < 0) {
            return 0;
        }
        vd_error_set_progname(name);
        template = calloc(1, img_size);
        if (!template) {
            return 0;
        }
        build_template(template);
    }
    static uint8_t patches[8192];
    size_t np;
    if (size >= 4 && !memcmp(data, "hex:", 4)) {
        np = fuzz_decode_hex(data + 4, size - 4, patches, sizeof(patches));
    } else {
        np = VD_MIN(size, sizeof(patches));
        memcpy(patches, data, np);
    }
    uint8_t *img = malloc(img_size);
    if (!img) {
        return 0;
    }
    memcpy(img, template, img_size);
    fuzz_apply_patches(img, img_size, patches, np);

    const char *dump = getenv("VDISK_FUZZ_DUMP");
    if (dump) {
        FILE *f = fopen(dump, "wb");
        if (f) {
            fwrite(img, 1, img_size, f);
            fclose(f);
        }
    }
    int fd = memfd_create(name, 0);
    if (fd >= 0 && write(fd, img, img_size) == (ssize_t)img_size) {
        char path[64];
        snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
        exercise(path, 0);
        exercise(path, VD_O_RDWR);
    }
    if (fd >= 0) {
        close(fd);
    }
    free(img);
    return 0;
}

#endif
