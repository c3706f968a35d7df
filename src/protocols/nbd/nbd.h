/*
 * The NBD client protocol driver (src/protocols/nbd/): private state shared
 * by nbd-uri.c (filenames and options, QEMU's syntax) and nbd-client.c (the
 * connection on libnbd's asynchronous API and the data path).
 */
#ifndef VDISK_PROTOCOLS_NBD_H
#define VDISK_PROTOCOLS_NBD_H

#include <stdbool.h>
#include <stdint.h>
#include "block/driver.h"

#define NBD_DEFAULT_PORT "10809"

/* Where the server is: QEMU's SocketAddress (inet or unix) plus the export. */
typedef struct NbdAddress {
    bool is_unix;
    char *host;       /* inet */
    char *port;       /* inet; NBD_DEFAULT_PORT if not given */
    char *path;       /* unix socket path */
    char *export;     /* NULL: the default export ("") */
} NbdAddress;

/*
 * Turn a QEMU NBD filename into options under the node's option tree
 * (server.type, server.host, server.port, server.path, export):
 *   nbd://host[:port][/export]      nbd+tcp://...     nbd+unix:///export?socket=PATH
 *   nbd:host:port[:exportname=E]    nbd:unix:PATH[:exportname=E]   (legacy)
 * Returns 0 or -EINVAL with errp naming the filename and the bad part.
 */
int nbd_parse_filename(const char *filename, VdOpts *options, VdError **errp);

/* Take server.*, export and the legacy host/port/path keys out of options
 * into addr (zeroed by the caller). 0 or -EINVAL with errp. */
int nbd_take_address(VdOpts *options, NbdAddress *addr, VdError **errp);

/* The name QEMU gives the node: nbd://host:port[/export] or
 * nbd+unix:///export?socket=path (nbd+unix://?socket=path without export). */
void nbd_address_to_filename(const NbdAddress *addr, char *buf, size_t size);

void nbd_address_free(NbdAddress *addr);

#endif
