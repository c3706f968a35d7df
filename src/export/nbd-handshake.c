/*
 * The NBD fixed-newstyle handshake, in the main context with a timeout:
 * options (LIST, INFO, GO, structured replies, meta contexts), then the
 * hand-off of the connection to its export's context.
 */
#include "export/nbd-int.h"

/* ---------------------------------------------------------------------------
 * Handshake (main context)
 */

static int coroutine_fn nbd_opt_reply(NbdConn *c, uint32_t option, uint32_t type,
                                      const void *data, uint32_t len)
{
    VD_CO_ASSERT();
    uint8_t hdr[NBD_OPTION_REPLY_SIZE];
    struct iovec iov[2] = { { hdr, sizeof(hdr) }, { (void *)data, len } };

    nbd_option_reply_encode(hdr, option, type, len);
    return nbd_co_writev(c, iov, len ? 2 : 1);
}

static int coroutine_fn nbd_opt_error(NbdConn *c, uint32_t option, uint32_t type,
                                      const char *msg)
{
    VD_CO_ASSERT();
    return nbd_opt_reply(c, option, type, msg, msg ? (uint32_t)strlen(msg) : 0);
}

static uint16_t nbd_tx_flags(NbdConn *c, VdExport *exp)
{
    uint16_t f = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA |
                 NBD_FLAG_CAN_MULTI_CONN | NBD_FLAG_SEND_CACHE;
    if (exp->writable) {
        f |= NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_FAST_ZERO;
    } else {
        f |= NBD_FLAG_READ_ONLY;
    }
    if (c->structured) {
        f |= NBD_FLAG_SEND_DF;
    }
    return f;
}

static int coroutine_fn nbd_send_info(NbdConn *c, uint32_t option, uint16_t type,
                                      const void *data, uint32_t len)
{
    VD_CO_ASSERT();
    uint8_t buf[2 + 12];
    uint8_t hdr[NBD_OPTION_REPLY_SIZE];
    struct iovec iov[3] = { { hdr, sizeof(hdr) }, { buf, 2 }, { (void *)data, len } };

    nbd_option_reply_encode(hdr, option, NBD_REP_INFO, 2 + len);
    nbd_put16(buf, type);
    return nbd_co_writev(c, iov, len ? 3 : 2);
}

/* Reply to INFO/GO. Returns 1 if the export was chosen (GO), 0 to go on, <0 to drop. */
static int coroutine_fn nbd_opt_info(NbdConn *c, uint32_t option, const uint8_t *data,
                                     uint32_t len, VdExport **chosen)
{
    VD_CO_ASSERT();
    NbdInfoRequest ir;
    const char *why;
    int ret;

    if (nbd_parse_info_request(data, len, &ir, &why) < 0) {
        return nbd_opt_error(c, option, NBD_REP_ERR_INVALID, why);
    }
    VdExport *exp = vd_export_find_by_name(ir.name, ir.name_len);
    if (!exp) {
        return nbd_opt_error(c, option, NBD_REP_ERR_UNKNOWN, "export not found");
    }
    uint8_t info[12];
    nbd_put64(info, exp->size);
    nbd_put16(info + 8, nbd_tx_flags(c, exp));
    char *name = strdup(exp->name);
    char *desc = strdup(exp->description);
    uint32_t bs[3] = { exp->min_block, VD_MAX(exp->min_block, NBD_PREFERRED_BLOCK),
                       exp->max_block };
    uint64_t size = exp->size;
    uint16_t txf = nbd_tx_flags(c, exp);
    if (!name || !desc) {
        free(name);
        free(desc);
        return -ENOMEM;
    }
    ret = nbd_send_info(c, option, NBD_INFO_EXPORT, info, 10);
    if (ret >= 0 && ir.want_name) {
        ret = nbd_send_info(c, option, NBD_INFO_NAME, name, strlen(name));
    }
    if (ret >= 0 && ir.want_description && desc[0]) {
        ret = nbd_send_info(c, option, NBD_INFO_DESCRIPTION, desc, strlen(desc));
    }
    if (ret >= 0) {
        uint8_t b[12];
        nbd_put32(b, bs[0]);
        nbd_put32(b + 4, bs[1]);
        nbd_put32(b + 8, bs[2]);
        ret = nbd_send_info(c, option, NBD_INFO_BLOCK_SIZE, b, 12);
    }
    if (ret >= 0) {
        ret = nbd_opt_reply(c, option, NBD_REP_ACK, NULL, 0);
    }
    if (ret >= 0 && option == NBD_OPT_GO) {
        /* Look it up again: the export may have gone while we were sending. */
        exp = vd_export_find_by_name(name, strlen(name));
        if (!exp || exp->deleting) {
            ret = -ENOENT;
        } else {
            if (!c->meta_export || strcmp(c->meta_export, exp->name) != 0) {
                c->meta = 0;
            }
            c->lim.size = size;
            c->lim.tx_flags = txf;
            *chosen = exp;
            ret = 1;
        }
    }
    free(name);
    free(desc);
    return ret;
}

static int coroutine_fn nbd_opt_meta(NbdConn *c, uint32_t option, const uint8_t *data,
                                     uint32_t len)
{
    VD_CO_ASSERT();
    NbdMetaRequest *mr;
    const char *why;
    int ret;

    if (!c->structured) {
        return nbd_opt_error(c, option, NBD_REP_ERR_INVALID,
                             "structured replies must be negotiated first");
    }
    mr = malloc(sizeof(*mr));
    if (!mr) {
        return -ENOMEM;
    }
    if (nbd_parse_meta_request(data, len, mr, &why) < 0) {
        ret = nbd_opt_error(c, option, NBD_REP_ERR_INVALID, why);
        goto out;
    }
    VdExport *exp = vd_export_find_by_name(mr->name, mr->name_len);
    if (!exp) {
        ret = nbd_opt_error(c, option, NBD_REP_ERR_UNKNOWN, "export not found");
        goto out;
    }
    bool list = option == NBD_OPT_LIST_META_CONTEXT;
    unsigned mask = 0;
    if (list && mr->n_queries == 0) {
        mask = 3;
    }
    for (uint32_t i = 0; i < mr->n_queries; i++) {
        mask |= nbd_meta_query_match(mr->query[i], mr->query_len[i], list);
    }
    if (!list) {
        free(c->meta_export);
        c->meta_export = strdup(exp->name);
        c->meta = c->meta_export ? mask : 0;
    }
    ret = 0;
    for (uint32_t id = 1; id <= 2 && ret >= 0; id++) {
        if (!(mask & (1u << (id - 1)))) {
            continue;
        }
        const char *n = nbd_meta_context_name(id);
        uint8_t buf[64];
        nbd_put32(buf, list ? 0 : id);
        memcpy(buf + 4, n, strlen(n));
        ret = nbd_opt_reply(c, option, NBD_REP_META_CONTEXT, buf, 4 + strlen(n));
    }
    if (ret >= 0) {
        ret = nbd_opt_reply(c, option, NBD_REP_ACK, NULL, 0);
    }
out:
    free(mr);
    return ret;
}

static int coroutine_fn nbd_opt_list(NbdConn *c, uint32_t option)
{
    VD_CO_ASSERT();
    int ret = 0;
    /* The registry is main-thread data, like this coroutine; only the
     * yields in between need care. */
    for (VdExport *e = vd_export_next(NULL); e && ret >= 0; e = vd_export_next(e)) {
        size_t nl = strlen(e->name), dl = strlen(e->description);
        uint8_t *buf = malloc(4 + nl + dl);
        if (!buf) {
            return -ENOMEM;
        }
        nbd_put32(buf, nl);
        memcpy(buf + 4, e->name, nl);
        memcpy(buf + 4 + nl, e->description, dl);
        char *name = strdup(e->name);
        ret = nbd_opt_reply(c, option, NBD_REP_SERVER, buf, 4 + nl + dl);
        free(buf);
        /* e may be gone after the yield: continue from its name. */
        e = name ? vd_export_find_by_name(name, strlen(name)) : NULL;
        free(name);
        if (!e) {
            break;
        }
    }
    if (ret >= 0) {
        ret = nbd_opt_reply(c, option, NBD_REP_ACK, NULL, 0);
    }
    return ret;
}

static void nbd_handshake_timeout(void *opaque)
{
    NbdConn *c = opaque;
    VD_TRACE(VD_LOG_NBD, "nbd: handshake timeout on fd %d", c->fd);
    c->handshake_timed_out = true;
    shutdown(c->fd, SHUT_RDWR);
}

/* Returns the chosen export, or NULL to drop the connection. */
static VdExport *coroutine_fn nbd_handshake(NbdConn *c)
{
    VD_CO_ASSERT();
    uint8_t buf[18];
    VdExport *chosen = NULL;
    int ret;

    nbd_put64(buf, NBD_MAGIC_INIT);
    nbd_put64(buf + 8, NBD_MAGIC_OPTS);
    nbd_put16(buf + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
    if (nbd_co_write(c, buf, 18) < 0 || nbd_co_read(c, buf, 4, false) < 0) {
        return NULL;
    }
    uint32_t cflags = nbd_get32(buf);
    if (cflags & ~(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) {
        VD_TRACE(VD_LOG_NBD, "nbd: unknown client flags 0x%x", cflags);
        return NULL;
    }
    c->no_zeroes = cflags & NBD_FLAG_C_NO_ZEROES;

    for (int nopts = 0; nopts < NBD_MAX_OPTIONS; nopts++) {
        uint8_t oh[NBD_OPTION_HEADER_SIZE];
        NbdOptionHeader h;
        uint8_t *data = NULL;

        if (nbd_co_read(c, oh, sizeof(oh), false) < 0) {
            return NULL;
        }
        nbd_option_header_decode(oh, &h);
        if (h.magic != NBD_MAGIC_OPTS) {
            return NULL;
        }
        VD_TRACE(VD_LOG_NBD, "nbd: option %u length %u", h.option, h.length);
        if (h.length > NBD_MAX_OPTION_PAYLOAD) {
            /* Never allocate what a client claims; skip a moderate payload
             * and say why, drop the connection for an absurd one. */
            if (h.option == NBD_OPT_EXPORT_NAME || h.length > NBD_MAX_SKIPPED_OPTION ||
                nbd_co_skip(c, h.length) < 0 ||
                nbd_opt_error(c, h.option, NBD_REP_ERR_TOO_BIG, "option payload too large") < 0) {
                return NULL;
            }
            continue;
        }
        data = malloc(h.length + 1);
        if (!data || nbd_co_read(c, data, h.length, false) < 0) {
            free(data);
            return NULL;
        }
        data[h.length] = 0;

        ret = 0;
        switch (h.option) {
        case NBD_OPT_EXPORT_NAME: {
            VdExport *exp = NULL;
            if (nbd_string_valid((char *)data, h.length)) {
                exp = vd_export_find_by_name((char *)data, h.length);
            }
            if (!exp || exp->deleting) {
                free(data);
                return NULL;   /* this option cannot fail: hard disconnect */
            }
            uint8_t rep[10 + 124] = { 0 };
            if (!c->meta_export || strcmp(c->meta_export, exp->name) != 0) {
                c->meta = 0;
            }
            c->lim.size = exp->size;
            c->lim.tx_flags = nbd_tx_flags(c, exp);
            nbd_put64(rep, exp->size);
            nbd_put16(rep + 8, c->lim.tx_flags);
            char *name = strdup(exp->name);
            ret = nbd_co_write(c, rep, c->no_zeroes ? 10 : sizeof(rep));
            exp = name ? vd_export_find_by_name(name, strlen(name)) : NULL;
            free(name);
            free(data);
            return ret < 0 ? NULL : exp;
        }
        case NBD_OPT_ABORT:
            nbd_opt_reply(c, h.option, NBD_REP_ACK, NULL, 0);
            free(data);
            return NULL;
        case NBD_OPT_LIST:
            if (h.length) {
                ret = nbd_opt_error(c, h.option, NBD_REP_ERR_INVALID, "LIST takes no data");
            } else {
                ret = nbd_opt_list(c, h.option);
            }
            break;
        case NBD_OPT_STARTTLS:
            ret = nbd_opt_error(c, h.option, NBD_REP_ERR_POLICY, "TLS is not supported");
            break;
        case NBD_OPT_INFO:
        case NBD_OPT_GO:
            ret = nbd_opt_info(c, h.option, data, h.length, &chosen);
            break;
        case NBD_OPT_STRUCTURED_REPLY:
            if (h.length) {
                ret = nbd_opt_error(c, h.option, NBD_REP_ERR_INVALID,
                                    "STRUCTURED_REPLY takes no data");
            } else if (c->structured) {
                ret = nbd_opt_error(c, h.option, NBD_REP_ERR_INVALID,
                                    "structured replies already negotiated");
            } else {
                c->structured = true;
                ret = nbd_opt_reply(c, h.option, NBD_REP_ACK, NULL, 0);
            }
            break;
        case NBD_OPT_LIST_META_CONTEXT:
        case NBD_OPT_SET_META_CONTEXT:
            ret = nbd_opt_meta(c, h.option, data, h.length);
            break;
        default:
            ret = nbd_opt_error(c, h.option, NBD_REP_ERR_UNSUP, "unknown option");
            break;
        }
        free(data);
        if (ret < 0) {
            return NULL;
        }
        if (ret == 1) {
            return chosen;
        }
    }
    VD_TRACE(VD_LOG_NBD, "nbd: too many options, dropping client");
    return NULL;
}

static void coroutine_fn nbd_conn_handshake_entry(void *opaque)
{
    VD_CO_ASSERT();
    NbdConn *c = opaque;
    VdExport *exp = nbd_handshake(c);

    vd_timer_free(c->handshake_timer);
    c->handshake_timer = NULL;
    if (!exp || c->handshake_timed_out) {
        nbd_conn_free(c);
        return;
    }
    c->obuf = malloc(NBD_OBUF_SIZE);
    c->obuf_spare = malloc(NBD_OBUF_SIZE);
    if (!c->obuf || !c->obuf_spare) {
        nbd_conn_free(c);
        return;
    }
    c->lim.min_block = exp->min_block;
    c->lim.max_block = exp->max_block;
    c->lim.structured = c->structured;
    c->lim.meta_contexts = c->meta;

    /* Hand the connection to the export's context. */
    c->read_registered = c->write_registered = false;
    vd_aio_set_fd_handler(c->ctx, c->fd, NULL, NULL, NULL, NULL, NULL);
    nbd_server_lock();
    c->exp = exp;
    c->next_in_export = exp->conns;
    exp->conns = c;
    __atomic_add_fetch(&exp->n_conns, 1, __ATOMIC_RELEASE);   /* read unlocked */
    bool parked = __atomic_load_n(&exp->quiescing, __ATOMIC_ACQUIRE);
    if (!parked) {
        c->ctx = vd_backend_get_context(exp->blk);
    }
    nbd_server_unlock();
    if (parked) {
        __atomic_store_n(&c->parked, true, __ATOMIC_RELEASE);
        vd_aio_wait_kick();
        return;
    }
    VD_TRACE(VD_LOG_NBD, "nbd: client on fd %d enters transmission on export '%s'",
             c->fd, exp->name);
    vd_co_move_to(c->ctx);
    nbd_conn_recv_loop(c);
}

void vd_nbd_server_add_client(int fd)
{
    NbdConn *c = calloc(1, sizeof(*c));

    if (!c || !(c->rbuf = malloc(NBD_RBUF_SIZE))) {
        free(c);
        close(fd);
        return;
    }
    int fl = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, fl | O_NONBLOCK);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->fd = fd;
    c->refcnt = 1;
    c->ctx = vd_aio_main_context();
    c->lim.max_block = NBD_DEFAULT_MAX_BLOCK;
    vd_co_mutex_init(&c->send_lock);
    nbd_server_lock();
    c->next = g_nbd_server.conns;
    g_nbd_server.conns = c;
    __atomic_add_fetch(&g_nbd_server.n_conns, 1, __ATOMIC_RELEASE);
    nbd_server_unlock();
    c->handshake_timer = vd_timer_new(c->ctx, nbd_handshake_timeout, c);
    vd_timer_mod(c->handshake_timer, vd_clock_ns() + g_nbd_server.handshake_timeout_ns);
    vd_co_enter(vd_co_create(nbd_conn_handshake_entry, c));
}
