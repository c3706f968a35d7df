/*
 * vdisk-img snapshot: list (-l), create (-c), apply (-a) and delete (-d)
 * internal snapshots, with qemu-img's table and messages.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "img-common.h"

/* One row (or with sn NULL the header) of qemu's snapshot table, no newline. */
static void snapshot_dump(const VdSnapshotInfo *sn)
{
    if (!sn) {
        printf("%-10s%-17s%8s%20s%13s%11s", "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK",
               "ICOUNT");
        return;
    }
    char date[64], clock[64], icount[32] = "";
    time_t t = sn->date_sec;
    struct tm tm;
    localtime_r(&t, &tm);
    strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S", &tm);
    uint64_t secs = sn->vm_clock_nsec / 1000000000;
    snprintf(clock, sizeof(clock), "%02d:%02d:%02d.%03d", (int)(secs / 3600),
             (int)((secs / 60) % 60), (int)(secs % 60),
             (int)((sn->vm_clock_nsec / 1000000) % 1000));
    if (sn->icount != UINT64_MAX) {
        snprintf(icount, sizeof(icount), "%" PRId64, (int64_t)sn->icount);
    }
    char *size = img_size_to_str(sn->vm_state_size);
    printf("%-9s %-16s %8s%20s%13s%11s", sn->id_str, sn->name, size ? size : "", date, clock,
           icount);
    free(size);
}

static int snapshot_list(VdNode *node)
{
    VdSnapshotInfo *list = NULL;
    int n = vd_node_snapshot_list(node, &list);
    if (n <= 0) {
        free(list);
        return 0;
    }
    printf("Snapshot list:\n");
    snapshot_dump(NULL);
    printf("\n");
    for (int i = 0; i < n; i++) {
        snapshot_dump(&list[i]);
        printf("\n");
    }
    free(list);
    return 0;
}

enum { SNAPSHOT_LIST = 1, SNAPSHOT_CREATE, SNAPSHOT_APPLY, SNAPSHOT_DELETE };

int img_cmd_snapshot(int argc, char **argv)
{
    const struct option *longopts = img_std_longopts;
    const char *fmt = NULL, *name = NULL;
    bool quiet = false, image_opts = false, force_share = false;
    int action = 0, c;

    img_getopt_reset();
    while ((c = getopt_long(argc, argv, ":la:c:d:f:hqU", longopts, NULL)) != -1) {
        int this_action = 0;
        switch (c) {
        case 'f': fmt = optarg; break;
        case 'l': this_action = SNAPSHOT_LIST; break;
        case 'a': this_action = SNAPSHOT_APPLY; name = optarg; break;
        case 'c': this_action = SNAPSHOT_CREATE; name = optarg; break;
        case 'd': this_action = SNAPSHOT_DELETE; name = optarg; break;
        case 'q': quiet = true; break;
        case 'U': force_share = true; break;
        case 'I': image_opts = true; break;
        case 'O': break;
        case 'h':
            printf("usage: %s snapshot [--object objectdef] [--image-opts] [-U] [-q] "
                   "[-l | -a snapshot | -c snapshot | -d snapshot] [-f fmt] filename\n",
                   IMG_PROG);
            return 0;
        default:
            return img_bad_option(c, argv);
        }
        if (this_action) {
            if (action) {
                return img_missing_argument("Cannot mix '-l', '-a', '-c', '-d'");
            }
            action = this_action;
        }
    }
    if (optind != argc - 1) {
        return img_missing_argument("Expecting one image file name");
    }
    const char *filename = argv[optind];
    int flags = action == SNAPSHOT_LIST ? (force_share ? VD_O_FORCE_SHARE : 0) : VD_O_RDWR;
    if (force_share && action != SNAPSHOT_LIST) {
        img_error("Could not open '%s': force-share=on can only be used with read-only images",
                  filename);
        return 1;
    }
    VdBackend *blk = img_open(filename, fmt, image_opts, flags, NULL, quiet);
    if (!blk) {
        return 1;
    }
    VdNode *node = vd_backend_node(blk);
    VdError *err = NULL;
    int ret = 0;
    char prefix[512];

    switch (action) {
    case SNAPSHOT_LIST:
        snapshot_list(node);
        break;
    case SNAPSHOT_CREATE: {
        VdSnapshotInfo sn;
        struct timespec ts;
        memset(&sn, 0, sizeof(sn));
        snprintf(sn.name, sizeof(sn.name), "%s", name);
        clock_gettime(CLOCK_REALTIME, &ts);
        sn.date_sec = ts.tv_sec;
        sn.date_nsec = ts.tv_nsec / 1000 * 1000;
        sn.icount = 0;
        ret = vd_node_snapshot_create(node, &sn, &err);
        if (ret == -ENOTSUP) {
            /* qemu-img's wording for a format without snapshots */
            vd_error_free_and_clear(&err);
            img_error("Could not create snapshot '%s': %d (%s)", name, ret, strerror(-ret));
        } else if (ret < 0) {
            snprintf(prefix, sizeof(prefix), "Could not create snapshot '%s': ", name);
            img_error_err(err, prefix);
        }
        break;
    }
    case SNAPSHOT_APPLY:
        ret = vd_node_snapshot_goto(node, name, &err);
        if (ret < 0) {
            if (ret == -ENOTSUP) {
                vd_error_free_and_clear(&err);
                img_error("Could not apply snapshot '%s': Block driver does not support "
                          "snapshots", name);
            } else if (ret == -ENOENT) {
                /* qemu-img's wording for a missing snapshot */
                vd_error_free_and_clear(&err);
                img_error("Could not apply snapshot '%s': Failed to load snapshot: %s", name,
                          strerror(ENOENT));
            } else {
                snprintf(prefix, sizeof(prefix), "Could not apply snapshot '%s': ", name);
                img_error_err(err, prefix);
            }
        }
        break;
    case SNAPSHOT_DELETE:
        /* By ID first, then by name, as qemu-img does. */
        ret = vd_node_snapshot_delete(node, name, NULL, &err);
        if (ret == -ENOENT) {
            vd_error_free_and_clear(&err);
            ret = vd_node_snapshot_delete(node, NULL, name, &err);
        }
        if (ret < 0) {
            if (ret == -ENOENT || ret == -ENOTSUP) {
                /* qemu-img looks the snapshot up first: not found either way */
                vd_error_free_and_clear(&err);
                img_error("Could not delete snapshot '%s': snapshot not found", name);
            } else {
                snprintf(prefix, sizeof(prefix), "Could not delete snapshot '%s': ", name);
                img_error_err(err, prefix);
            }
        }
        break;
    default:
        /* No action given: qemu-img lists. */
        snapshot_list(node);
        break;
    }
    vd_backend_unref(blk);
    return ret < 0 ? 1 : 0;
}
