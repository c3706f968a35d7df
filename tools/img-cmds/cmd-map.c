/*
 * vdisk-img map: walk the backing chain's block status and print merged
 * extents as qemu-img 7.2 does (human table of data extents, or json with
 * start/length/depth/present/zero/data/offset).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "img-common.h"

typedef struct MapEntry {
    int64_t start, length, offset, depth;
    bool present, zero, data, has_offset;
    const char *filename;   /* NULL: none */
} MapEntry;

typedef struct MapStatus {
    VdNode *top;
    int64_t offset, bytes;
    MapEntry *e;
    int ret;
} MapStatus;

/* Status of [offset, offset+bytes): descend the chain until a layer has data
 * or zeros; depth counts the layers passed. Coroutine in top's context. */
static void coroutine_fn map_status_entry(void *opaque)
{
    VD_CO_ASSERT();
    MapStatus *s = opaque;
    VdNode *node = s->top, *file = NULL;
    int64_t pnum = 0, map = 0, bytes = s->bytes;
    int depth = 0, ret;

    for (;;) {
        node = vd_node_format_node(node);
        file = NULL;
        ret = vd_co_block_status(node, true, s->offset, bytes, &pnum, &map, &file);
        if (ret < 0) {
            s->ret = ret;
            return;
        }
        if (pnum <= 0) {
            s->ret = -EIO;
            return;
        }
        bytes = pnum;
        if (ret & (VD_BLOCK_ZERO | VD_BLOCK_DATA)) {
            break;
        }
        VdNode *backing = vd_node_backing(node);
        if (!backing) {
            /* Unallocated in the last layer: reads as zeros. */
            VdDriverInfo drv;
            vd_node_get_driver_info(node, &drv);
            if (drv.supports_backing) {
                ret |= VD_BLOCK_ZERO;
            } else {
                ret = 0;
            }
            break;
        }
        /* Past the end of a shorter backing file: zeros. */
        int64_t blen = vd_node_getlength(backing);
        if (blen >= 0 && s->offset >= blen) {
            ret |= VD_BLOCK_ZERO;
            break;
        }
        if (blen >= 0 && s->offset + bytes > blen) {
            bytes = blen - s->offset;
        }
        node = backing;
        depth++;
    }
    MapEntry *e = s->e;
    e->start = s->offset;
    e->length = bytes;
    e->data = !!(ret & VD_BLOCK_DATA);
    e->zero = !!(ret & VD_BLOCK_ZERO);
    e->has_offset = !!(ret & VD_BLOCK_OFFSET_VALID);
    e->offset = e->has_offset ? map : 0;
    e->depth = depth;
    e->present = !!(ret & VD_BLOCK_ALLOCATED);
    e->filename = (file && e->has_offset) ? vd_node_filename(file) : NULL;
    s->ret = 0;
}

static bool map_mergeable(const MapEntry *a, const MapEntry *b)
{
    if (a->length == 0) {
        return false;
    }
    if (a->zero != b->zero || a->data != b->data || a->depth != b->depth ||
        a->present != b->present || !a->filename != !b->filename ||
        a->has_offset != b->has_offset) {
        return false;
    }
    if (a->filename && strcmp(a->filename, b->filename)) {
        return false;
    }
    if (a->has_offset && a->offset + a->length != b->offset) {
        return false;
    }
    return true;
}

static int map_dump(bool json, const MapEntry *e, MapEntry *next)
{
    if (!json) {
        if (e->data && !e->has_offset) {
            img_error("File contains external, encrypted or compressed clusters.");
            return -1;
        }
        if (e->data && !e->zero) {
            printf("%#-16" PRIx64 "%#-16" PRIx64 "%#-16" PRIx64 "%s\n", (uint64_t)e->start,
                   (uint64_t)e->length, (uint64_t)(e->has_offset ? e->offset : 0),
                   e->filename ? e->filename : "");
        }
        /* The table does not tell zero extents apart: merge them more. */
        if (next && (!next->data || next->zero)) {
            next->data = false;
            next->zero = true;
        }
        return 0;
    }
    printf("{ \"start\": %" PRId64 ", \"length\": %" PRId64 ", \"depth\": %" PRId64
           ", \"present\": %s, \"zero\": %s, \"data\": %s", e->start, e->length, e->depth,
           e->present ? "true" : "false", e->zero ? "true" : "false",
           e->data ? "true" : "false");
    if (e->has_offset) {
        printf(", \"offset\": %" PRId64, e->offset);
    }
    putchar('}');
    if (next) {
        puts(",");
    }
    return 0;
}

int img_cmd_map(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "format", required_argument, NULL, 'f' },
        { "output", required_argument, NULL, 'o' },
        { "object", required_argument, NULL, 'O' },
        { "image-opts", no_argument, NULL, 'I' },
        { "force-share", no_argument, NULL, 'U' },
        { "start-offset", required_argument, NULL, 's' },
        { "max-length", required_argument, NULL, 'l' },
        { NULL, 0, NULL, 0 },
    };
    const char *fmt = NULL;
    bool json = false, image_opts = false, force_share = false;
    int64_t start_offset = 0, max_length = -1;
    uint64_t v;
    int c;

    img_getopt_reset();
    while ((c = getopt_long(argc, argv, ":f:hU", longopts, NULL)) != -1) {
        switch (c) {
        case 'f': fmt = optarg; break;
        case 'o':
            if (img_parse_output(optarg, &json)) {
                return 1;
            }
            break;
        case 'U': force_share = true; break;
        case 'I': image_opts = true; break;
        case 'O': break;
        case 's':
            if (vd_parse_size(optarg, &v) < 0 || v > INT64_MAX) {
                return img_size_error("start offset");
            }
            start_offset = v;
            break;
        case 'l':
            if (vd_parse_size(optarg, &v) < 0 || v > INT64_MAX) {
                return img_size_error("max length");
            }
            max_length = v;
            break;
        case 'h':
            printf("usage: %s map [--object objectdef] [--image-opts] [-f fmt] "
                   "[--start-offset=offset] [--max-length=len] [--output=ofmt] [-U] filename\n",
                   IMG_PROG);
            return 0;
        default:
            return img_bad_option(c, argv);
        }
    }
    if (optind != argc - 1) {
        return img_missing_argument("Expecting one image file name");
    }
    VdBackend *blk = img_open(argv[optind], fmt, image_opts,
                              force_share ? VD_O_FORCE_SHARE : 0, NULL, false);
    if (!blk) {
        return 1;
    }
    VdNode *top = vd_backend_node(blk);
    int64_t length = vd_backend_getlength(blk);
    if (length < 0) {
        img_error("Failed to get size for '%s'", argv[optind]);
        vd_backend_unref(blk);
        return 1;
    }
    /* both are at most INT64_MAX: compare without forming the sum */
    if (max_length != -1 && max_length < length && start_offset < length - max_length) {
        length = start_offset + max_length;
    }
    if (json) {
        putchar('[');
    } else {
        printf("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File");
    }
    MapEntry curr = { .start = start_offset }, next;
    int ret = 0;
    while (curr.start + curr.length < length) {
        MapStatus s = { .top = top, .offset = curr.start + curr.length, .e = &next };
        s.bytes = length - s.offset;
        vd_co_run_sync(vd_node_get_context(top), map_status_entry, &s);
        if (s.ret < 0) {
            img_error("Could not read file metadata: %s", strerror(-s.ret));
            ret = -1;
            break;
        }
        if (map_mergeable(&curr, &next)) {
            curr.length += next.length;
            continue;
        }
        if (curr.length > 0) {
            ret = map_dump(json, &curr, &next);
            if (ret < 0) {
                break;
            }
        }
        curr = next;
    }
    if (ret == 0) {
        ret = map_dump(json, &curr, NULL);
    }
    if (json) {
        printf("]\n");
    }
    vd_backend_unref(blk);
    return ret < 0 ? 1 : 0;
}
