/*
 * Format probing: the registered format whose probe scores an image's first
 * bytes highest, and the magics of formats vdisk has no driver for, so that
 * such an image is refused by name instead of being read as raw.
 */
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include "block/driver.h"

const VdDriver *vd_driver_probe(const uint8_t *buf, int buf_size, const char *filename)
{
    const VdDriver *best = NULL;
    int best_score = 0;
    for (const VdDriver *d = vd_driver_next(NULL); d; d = vd_driver_next(d)) {
        if (!d->probe || !d->is_format) {
            continue;
        }
        int score = d->probe(buf, buf_size, filename);
        if (score > best_score) {
            best_score = score;
            best = d;
        }
    }
    return best ? best : vd_driver_find("raw");
}

/* ---- formats without a driver ---------------------------------------------------------- */

static uint32_t probe_le32(const uint8_t *p)
{
    return p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint32_t probe_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* VMDK: a sparse extent (KDMV, or COWD for VMFS sparse), or a text
 * descriptor whose first line that is not a comment or blank is version=1..3
 * (a monolithicFlat descriptor file). */
static bool probe_vmdk(const uint8_t *buf, int size)
{
    if (size < 4) {
        return false;
    }
    if (!memcmp(buf, "KDMV", 4) || !memcmp(buf, "COWD", 4)) {
        return true;
    }
    const char *p = (const char *)buf, *end = p + size;
    while (p < end) {
        if (*p == '#') {
            while (p < end && *p != '\n') {
                p++;
            }
            p++;
            continue;
        }
        if (*p == ' ') {
            while (p < end && *p == ' ') {
                p++;
            }
            if (p < end && *p == '\r') {
                p++;
            }
            if (p == end || *p != '\n') {
                return false;
            }
            p++;
            continue;
        }
        for (char v = '1'; v <= '3'; v++) {
            char line[] = "version=X\n", crlf[] = "version=X\r\n";
            line[8] = crlf[8] = v;
            if ((end - p >= 10 && !memcmp(p, line, 10)) || (end - p >= 11 && !memcmp(p, crlf, 11))) {
                return true;
            }
        }
        return false;
    }
    return false;
}

static bool probe_vdi(const uint8_t *buf, int size)
{
    return size >= 68 && probe_le32(buf + 64) == 0xbeda107f;   /* after a 64-byte text */
}

static bool probe_vpc(const uint8_t *buf, int size)
{
    return size >= 8 && !memcmp(buf, "conectix", 8);           /* dynamic VHD footer copy */
}

static bool probe_vhdx(const uint8_t *buf, int size)
{
    return size >= 8 && !memcmp(buf, "vhdxfile", 8);
}

static bool probe_qcow1(const uint8_t *buf, int size)
{
    return size >= 48 && !memcmp(buf, "QFI\xfb", 4) && probe_be32(buf + 4) == 1;
}

static bool probe_luks(const uint8_t *buf, int size)
{
    /* LUKS1 only, as QEMU: a LUKS2 header is not recognised there either */
    return size >= 8 && !memcmp(buf, "LUKS\xba\xbe", 6) && buf[6] == 0 && buf[7] == 1;
}

static bool probe_qed(const uint8_t *buf, int size)
{
    return size >= 64 && !memcmp(buf, "QED\0", 4);
}

static bool probe_parallels(const uint8_t *buf, int size)
{
    return size >= 64 &&
           (!memcmp(buf, "WithoutFreeSpace", 16) || !memcmp(buf, "WithouFreSpacExt", 16)) &&
           probe_le32(buf + 16) == 2;
}

static bool probe_bochs(const uint8_t *buf, int size)
{
    /* magic[32], type[16], subtype[16] (NUL-terminated), then version */
    static const char magic[] = "Bochs Virtual HD Image";
    if (size < 512 || memcmp(buf, magic, sizeof(magic)) || memcmp(buf + 32, "Redolog", 8) ||
        memcmp(buf + 48, "Growing", 8)) {
        return false;
    }
    uint32_t version = probe_le32(buf + 64);
    return version == 0x00020000 || version == 0x00010000;
}

static bool probe_cloop(const uint8_t *buf, int size)
{
    static const char magic[] = "#!/bin/sh\n#V2.0 Format\n"
                                "modprobe cloop file=$IMAGE && mount -r -t iso9660 /dev/cloop $1\n";
    return size >= (int)sizeof(magic) - 1 && !memcmp(buf, magic, sizeof(magic) - 1);
}

static const struct {
    const char *name;               /* QEMU's format name */
    bool (*match)(const uint8_t *buf, int size);
} g_unsupported[] = {
    { "vmdk", probe_vmdk },
    { "vdi", probe_vdi },
    { "vpc", probe_vpc },
    { "vhdx", probe_vhdx },
    { "qcow", probe_qcow1 },
    { "luks", probe_luks },
    { "qed", probe_qed },
    { "parallels", probe_parallels },
    { "bochs", probe_bochs },
    { "cloop", probe_cloop },
};

const char *vd_probe_unsupported_format(const uint8_t *buf, int buf_size, const uint8_t *tail,
                                        int tail_size)
{
    for (size_t i = 0; i < VD_ARRAY_SIZE(g_unsupported); i++) {
        /* a format that has a driver now (QED once it lands) is probed by it */
        if (!vd_driver_find(g_unsupported[i].name) && g_unsupported[i].match(buf, buf_size)) {
            return g_unsupported[i].name;
        }
    }
    /* dmg: a "koly" trailer in the last 512 bytes (QEMU goes by the .dmg
     * suffix; the trailer is what the format defines) */
    if (tail && tail_size >= 512 && !memcmp(tail + tail_size - 512, "koly", 4) &&
        !vd_driver_find("dmg")) {
        return "dmg";
    }
    return NULL;
}
