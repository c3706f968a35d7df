/*
 * NBD client: filenames and options in QEMU's syntax. URIs and the legacy
 * "nbd:host:port" form become the structured options (server.type,
 * server.host, server.port, server.path, export), which are the one thing
 * nbd-client.c reads; the node is named back from them as QEMU names it.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "protocols/nbd/nbd.h"

#define NBD_NAME_MAX 4096   /* NBD protocol limit on an export name */

/* Percent-decode s[0..len) into a new string. NULL on a bad escape or a
 * decoded NUL byte (both are errors in a URI). */
static char *uri_decode(const char *s, size_t len)
{
    char *out = malloc(len + 1);
    size_t o = 0;
    if (!out) {
        return NULL;
    }
    for (size_t i = 0; i < len; i++) {
        if (s[i] != '%') {
            out[o++] = s[i];
            continue;
        }
        unsigned v = 0;
        for (int k = 1; k <= 2; k++) {
            char c = i + (size_t)k < len ? s[i + (size_t)k] : 0;
            int d = c >= '0' && c <= '9' ? c - '0'
                  : c >= 'a' && c <= 'f' ? c - 'a' + 10
                  : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
            if (d < 0) {
                free(out);
                return NULL;
            }
            v = v * 16 + (unsigned)d;
        }
        if (v == 0) {
            free(out);
            return NULL;
        }
        out[o++] = (char)v;
        i += 2;
    }
    out[o] = 0;
    return out;
}

static int set_decoded(VdOpts *options, const char *key, const char *s, size_t len,
                       const char *filename, const char *what, VdError **errp)
{
    char *v = uri_decode(s, len);
    if (!v) {
        vd_error_setg(errp, EINVAL, "%s: bad percent-escape in the %s", filename, what);
        return -EINVAL;
    }
    vd_opts_set(options, key, v);
    free(v);
    return 0;
}

static bool port_is_valid(const char *p, size_t len)
{
    if (len == 0 || len > 5) {
        return false;
    }
    unsigned v = 0;
    for (size_t i = 0; i < len; i++) {
        if (p[i] < '0' || p[i] > '9') {
            return false;
        }
        v = v * 10 + (unsigned)(p[i] - '0');
    }
    return v > 0 && v <= 65535;
}

/* nbd[+tcp|+unix]://[host[:port]]/[export][?socket=path] */
static int parse_uri(const char *filename, VdOpts *options, VdError **errp)
{
    const char *p = filename;
    bool is_unix;
    if (!strncmp(p, "nbd://", 6)) {
        is_unix = false;
        p += 6;
    } else if (!strncmp(p, "nbd+tcp://", 10)) {
        is_unix = false;
        p += 10;
    } else if (!strncmp(p, "nbd+unix://", 11)) {
        is_unix = true;
        p += 11;
    } else {
        vd_error_setg(errp, EINVAL, "%s: unknown NBD URI scheme (nbd://, nbd+tcp:// or "
                      "nbd+unix:// expected)", filename);
        return -EINVAL;
    }
    const char *auth_end = p + strcspn(p, "/?#");
    const char *path = auth_end;
    const char *path_end = path + strcspn(path, "?#");
    const char *query = *path_end == '?' ? path_end + 1 : NULL;
    const char *query_end = query ? query + strcspn(query, "#") : NULL;
    if (*(query_end ? query_end : path_end) == '#') {
        vd_error_setg(errp, EINVAL, "%s: an NBD URI has no fragment ('#...')", filename);
        return -EINVAL;
    }
    if (memchr(p, '@', (size_t)(auth_end - p))) {
        vd_error_setg(errp, EINVAL, "%s: user names are not supported in NBD URIs", filename);
        return -EINVAL;
    }

    /* export: the path without its leading '/' */
    if (path < path_end) {
        if (path + 1 < path_end &&
            set_decoded(options, "export", path + 1, (size_t)(path_end - path - 1), filename,
                        "export name", errp) < 0) {
            return -EINVAL;
        }
        if ((size_t)(path_end - path) > NBD_NAME_MAX) {
            vd_error_setg(errp, EINVAL, "%s: export name longer than %d bytes", filename,
                          NBD_NAME_MAX);
            return -EINVAL;
        }
    }

    if (is_unix) {
        if (auth_end != p) {
            vd_error_setg(errp, EINVAL, "%s: nbd+unix:// URIs take no host (use "
                          "nbd+unix:///export?socket=PATH)", filename);
            return -EINVAL;
        }
        if (!query || strncmp(query, "socket=", 7) || memchr(query, '&', (size_t)(query_end - query))) {
            vd_error_setg(errp, EINVAL, "%s: nbd+unix:// needs exactly one query parameter, "
                          "'socket=PATH'", filename);
            return -EINVAL;
        }
        if (query + 7 == query_end) {
            vd_error_setg(errp, EINVAL, "%s: empty socket path", filename);
            return -EINVAL;
        }
        vd_opts_set(options, "server.type", "unix");
        return set_decoded(options, "server.path", query + 7, (size_t)(query_end - query - 7),
                           filename, "socket path", errp);
    }

    if (query) {
        vd_error_setg(errp, EINVAL, "%s: nbd:// URIs take no query parameters", filename);
        return -EINVAL;
    }
    /* host: name, IPv4, or [IPv6]; then optional :port */
    const char *host = p, *host_end, *port = NULL;
    if (*p == '[') {
        host = p + 1;
        host_end = memchr(host, ']', (size_t)(auth_end - host));
        if (!host_end) {
            vd_error_setg(errp, EINVAL, "%s: unterminated '[' in the host", filename);
            return -EINVAL;
        }
        if (host_end + 1 < auth_end) {
            if (host_end[1] != ':') {
                vd_error_setg(errp, EINVAL, "%s: junk after ']' in the host", filename);
                return -EINVAL;
            }
            port = host_end + 2;
        }
    } else {
        host_end = memchr(p, ':', (size_t)(auth_end - p));
        if (host_end) {
            port = host_end + 1;
        } else {
            host_end = auth_end;
        }
    }
    if (host_end == host) {
        vd_error_setg(errp, EINVAL, "%s: an nbd:// URI needs a host", filename);
        return -EINVAL;
    }
    if (port && !port_is_valid(port, (size_t)(auth_end - port))) {
        vd_error_setg(errp, EINVAL, "%s: bad port '%.*s' (1..65535 expected)", filename,
                      (int)(auth_end - port), port);
        return -EINVAL;
    }
    vd_opts_set(options, "server.type", "inet");
    if (set_decoded(options, "server.host", host, (size_t)(host_end - host), filename, "host",
                    errp) < 0) {
        return -EINVAL;
    }
    if (port) {
        char buf[8];
        snprintf(buf, sizeof(buf), "%.*s", (int)(auth_end - port), port);
        vd_opts_set(options, "server.port", buf);
    }
    return 0;
}

/* nbd:host:port[:exportname=E] and nbd:unix:PATH[:exportname=E] */
static int parse_legacy(const char *filename, VdOpts *options, VdError **errp)
{
    const char *p = filename + 4;
    const char *ex = strstr(p, ":exportname=");
    size_t len = ex ? (size_t)(ex - p) : strlen(p);
    if (ex) {
        if (!ex[12]) {
            vd_error_setg(errp, EINVAL, "%s: empty exportname", filename);
            return -EINVAL;
        }
        vd_opts_set(options, "export", ex + 12);
    }
    if (!strncmp(p, "unix:", 5)) {
        if (len <= 5) {
            vd_error_setg(errp, EINVAL, "%s: empty socket path", filename);
            return -EINVAL;
        }
        char *path = strndup(p + 5, len - 5);
        vd_opts_set(options, "server.type", "unix");
        vd_opts_set(options, "server.path", path);
        free(path);
        return 0;
    }
    const char *colon = memchr(p, ':', len);
    if (!colon || colon == p || !port_is_valid(colon + 1, len - (size_t)(colon + 1 - p))) {
        vd_error_setg(errp, EINVAL, "%s: expected nbd:HOST:PORT[:exportname=NAME] or "
                      "nbd:unix:PATH[:exportname=NAME]", filename);
        return -EINVAL;
    }
    char *host = strndup(p, (size_t)(colon - p));
    char *port = strndup(colon + 1, len - (size_t)(colon + 1 - p));
    vd_opts_set(options, "server.type", "inet");
    vd_opts_set(options, "server.host", host);
    vd_opts_set(options, "server.port", port);
    free(host);
    free(port);
    return 0;
}

int nbd_parse_filename(const char *filename, VdOpts *options, VdError **errp)
{
    if (vd_opts_lookup(options, "server") || vd_opts_lookup(options, "host") ||
        vd_opts_lookup(options, "path") || vd_opts_lookup(options, "port") ||
        vd_opts_lookup(options, "export")) {
        vd_error_setg(errp, EINVAL, "%s: no server or export option may be given with an NBD "
                      "filename", filename);
        return -EINVAL;
    }
    if (strstr(filename, "://")) {
        return parse_uri(filename, options, errp);
    }
    if (!strncmp(filename, "nbd:", 4)) {
        return parse_legacy(filename, options, errp);
    }
    vd_error_setg(errp, EINVAL, "%s: not an NBD filename", filename);
    return -EINVAL;
}

int nbd_take_address(VdOpts *options, NbdAddress *addr, VdError **errp)
{
    static const char *const types[] = { "inet", "unix", NULL };
    char *lhost = NULL, *lport = NULL, *lpath = NULL;
    int type = -1;
    int ret = -EINVAL;

    if (vd_opts_take_enum(options, "server.type", types, -1, &type, errp) < 0 ||
        vd_opts_take_str(options, "server.host", NULL, &addr->host, errp) < 0 ||
        vd_opts_take_str(options, "server.port", NULL, &addr->port, errp) < 0 ||
        vd_opts_take_str(options, "server.path", NULL, &addr->path, errp) < 0 ||
        vd_opts_take_str(options, "export", NULL, &addr->export, errp) < 0 ||
        /* QEMU's legacy flat keys */
        vd_opts_take_str(options, "host", NULL, &lhost, errp) < 0 ||
        vd_opts_take_str(options, "port", NULL, &lport, errp) < 0 ||
        vd_opts_take_str(options, "path", NULL, &lpath, errp) < 0) {
        goto out;
    }
    if (lhost || lport || lpath) {
        if (type >= 0 || addr->host || addr->port || addr->path) {
            vd_error_setg(errp, EINVAL, "nbd: the legacy host/port/path options cannot be used "
                          "with server.*");
            goto out;
        }
        if (lpath && (lhost || lport)) {
            vd_error_setg(errp, EINVAL, "nbd: path and host/port may not be used at the same time");
            goto out;
        }
        type = lpath ? 1 : 0;
        addr->host = lhost;
        addr->port = lport;
        addr->path = lpath;
        lhost = lport = lpath = NULL;
    }
    /* the server object must not keep unknown keys (server.foo) */
    VdJson *rest = vd_opts_lookup(options, "server");
    if (rest) {
        if (vd_json_type(rest) == VD_JSON_OBJECT && vd_json_object_size(rest) == 0) {
            vd_json_object_del(options, "server");
        } else {
            vd_error_setg(errp, EINVAL, "nbd: unknown or misplaced option under 'server'");
            goto out;
        }
    }
    if (type < 0) {
        vd_error_setg(errp, EINVAL, "nbd: no server given (server.type=inet|unix, or an NBD "
                      "filename such as nbd://host:port/export)");
        goto out;
    }
    addr->is_unix = type == 1;
    if (addr->is_unix) {
        if (!addr->path || !addr->path[0]) {
            vd_error_setg(errp, EINVAL, "nbd: server.path is needed for server.type=unix");
            goto out;
        }
        if (addr->host || addr->port) {
            vd_error_setg(errp, EINVAL, "nbd: server.host/server.port do not apply to "
                          "server.type=unix");
            goto out;
        }
        if (strlen(addr->path) >= 108) {   /* sizeof(sun_path) */
            vd_error_setg(errp, EINVAL, "nbd: socket path '%s' is too long (%zu bytes, at most "
                          "107)", addr->path, strlen(addr->path));
            goto out;
        }
    } else {
        if (!addr->host || !addr->host[0]) {
            vd_error_setg(errp, EINVAL, "nbd: server.host is needed for server.type=inet");
            goto out;
        }
        if (addr->path) {
            vd_error_setg(errp, EINVAL, "nbd: server.path does not apply to server.type=inet");
            goto out;
        }
        if (!addr->port) {
            addr->port = strdup(NBD_DEFAULT_PORT);
        } else if (!port_is_valid(addr->port, strlen(addr->port))) {
            vd_error_setg(errp, EINVAL, "nbd: bad server.port '%s' (1..65535 expected)",
                          addr->port);
            goto out;
        }
    }
    if (addr->export && strlen(addr->export) > NBD_NAME_MAX) {
        vd_error_setg(errp, EINVAL, "nbd: export name longer than %d bytes", NBD_NAME_MAX);
        goto out;
    }
    ret = 0;
out:
    free(lhost);
    free(lport);
    free(lpath);
    return ret;
}

void nbd_address_to_filename(const NbdAddress *addr, char *buf, size_t size)
{
    bool v6 = !addr->is_unix && strchr(addr->host, ':');
    if (addr->is_unix) {
        if (addr->export) {
            snprintf(buf, size, "nbd+unix:///%s?socket=%s", addr->export, addr->path);
        } else {
            snprintf(buf, size, "nbd+unix://?socket=%s", addr->path);
        }
    } else if (addr->export) {
        snprintf(buf, size, "nbd://%s%s%s:%s/%s", v6 ? "[" : "", addr->host, v6 ? "]" : "",
                 addr->port, addr->export);
    } else {
        snprintf(buf, size, "nbd://%s%s%s:%s", v6 ? "[" : "", addr->host, v6 ? "]" : "",
                 addr->port);
    }
}

void nbd_address_free(NbdAddress *addr)
{
    free(addr->host);
    free(addr->port);
    free(addr->path);
    free(addr->export);
    memset(addr, 0, sizeof(*addr));
}
