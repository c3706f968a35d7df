/*
 * Fuzz the NBD server: the input is what a client sends (handshake options,
 * then requests), fed through a socketpair to a real server connection on a
 * null-co export. The server's output is read and dropped. Any crash, leak
 * or hang (the loop ends when the server closes the connection) is a bug.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "vdisk/block.h"
#include "export/export.h"

static bool fuzz_init(void)
{
    static int done;
    if (done) {
        return done > 0;
    }
    done = -1;
    if (vd_block_init(NULL) < 0) {
        return false;
    }
    VdOpts *o = vd_opts_parse("driver=null-co,size=67108864,read-zeroes=on", NULL, NULL);
    VdBackend *blk = o ? vd_backend_open(NULL, o, VD_O_RDWR, NULL) : NULL;
    if (!blk) {
        return false;
    }
    VdExportConfig cfg = { .id = "fuzz", .name = "fuzz", .description = "fuzz export",
                           .blk = blk, .writable = true, .min_block = 1 };
    if (!vd_export_add(&cfg, NULL)) {
        return false;
    }
    VdExportConfig cfg2 = { .id = "fuzz-ro", .name = "ro", .blk = blk, .writable = false,
                            .min_block = 512 };
    vd_export_add(&cfg2, NULL);
    /* blk stays alive for the whole run: exports borrow it */
    vd_nbd_server_set_handshake_timeout(2LL * 1000 * 1000 * 1000);
    done = 1;
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int sv[2];

    if (!fuzz_init() || socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        return 0;
    }
    fcntl(sv[0], F_SETFL, O_NONBLOCK);
    vd_nbd_server_add_client(sv[1]);

    size_t sent = 0;
    bool shut = false;
    char sink[65536];
    while (vd_nbd_server_n_clients() > 0) {
        if (sent < size) {
            ssize_t n = send(sv[0], data + sent, size - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (n > 0) {
                sent += n;
            } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
                sent = size;   /* server closed its end */
            }
        }
        if (sent == size && !shut) {
            shutdown(sv[0], SHUT_WR);
            shut = true;
        }
        while (recv(sv[0], sink, sizeof(sink), MSG_DONTWAIT) > 0) {
        }
        vd_aio_poll(vd_aio_main_context(), false);
        if (vd_nbd_server_n_clients() > 0) {
            struct pollfd p = { .fd = sv[0], .events = POLLIN | (sent < size ? POLLOUT : 0) };
            poll(&p, 1, 1);
        }
    }
    close(sv[0]);
    return 0;
}
