/* qcow2 compressed-cluster codec (zlib raw deflate, zstd): pure buffer work,
 * run inline for small clusters and on a thread-pool worker for clusters of
 * QCOW2_CODEC_OFFLOAD_MIN bytes and more, so the AioContext thread keeps going. */

#include <errno.h>
#include <stdatomic.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>
#include "vdisk/aio.h"
#include "formats/qcow2/qcow2.h"

static atomic_uint_fast64_t qcow2_codec_offloaded;

uint64_t qcow2_codec_offload_count(void)
{
    return atomic_load(&qcow2_codec_offloaded);
}

static int qcow2_inflate(Qcow2CodecJob *j)
{
    int ret = -EIO;
    if (j->type == QCOW2_COMPRESSION_ZLIB) {
        z_stream z;
        memset(&z, 0, sizeof(z));
        if (inflateInit2(&z, -12) == Z_OK) {
            z.next_in = (Bytef *)j->in;
            z.avail_in = (uInt)j->in_len;
            z.next_out = j->out;
            z.avail_out = (uInt)j->out_cap;
            int zr = inflate(&z, Z_FINISH);
            if ((zr == Z_STREAM_END || zr == Z_BUF_ERROR || zr == Z_OK) && z.avail_out == 0) {
                ret = 0;
            }
            inflateEnd(&z);
        }
    } else {
        ZSTD_DCtx *d = ZSTD_createDCtx();
        if (d) {
            ZSTD_outBuffer ob = { j->out, j->out_cap, 0 };
            ZSTD_inBuffer ib = { j->in, j->in_len, 0 };
            while (ob.pos < ob.size && ib.pos < ib.size) {
                size_t zr = ZSTD_decompressStream(d, &ob, &ib);
                if (ZSTD_isError(zr)) {
                    break;
                }
                if (zr == 0 && ob.pos < ob.size && ib.pos == ib.size) {
                    break;
                }
            }
            if (ob.pos == ob.size) {
                ret = 0;
            }
            ZSTD_freeDCtx(d);
        }
    }
    j->out_len = ret == 0 ? j->out_cap : 0;
    return ret;
}

/* Compressed size into out_len; 0 when the data does not fit in out_cap. */
static int qcow2_deflate(Qcow2CodecJob *j)
{
    j->out_len = 0;
    if (j->type == QCOW2_COMPRESSION_ZLIB) {
        z_stream z;
        memset(&z, 0, sizeof(z));
        if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9,
                         Z_DEFAULT_STRATEGY) != Z_OK) {
            return -ENOMEM;
        }
        z.next_in = (Bytef *)j->in;
        z.avail_in = (uInt)j->in_len;
        z.next_out = j->out;
        z.avail_out = (uInt)j->out_cap;
        if (deflate(&z, Z_FINISH) == Z_STREAM_END) {
            j->out_len = j->out_cap - z.avail_out;
        }
        deflateEnd(&z);
    } else {
        size_t r = ZSTD_compress(j->out, j->out_cap, j->in, j->in_len, 1);
        if (!ZSTD_isError(r)) {
            j->out_len = r;
        }
    }
    return 0;
}

/* Worker side: touches only the job and its buffers. */
static int qcow2_codec_worker(void *opaque)
{
    Qcow2CodecJob *j = opaque;
    return j->compress ? qcow2_deflate(j) : qcow2_inflate(j);
}

/* Mixed: outside a coroutine (the codec's unit test) the job runs inline. */
int coroutine_mixed_fn qcow2_codec_co_run(Qcow2CodecJob *j)
{
    /* the caller owns j and its buffers and stays suspended until the
     * worker has finished, so they outlive the job */
    size_t cluster = j->compress ? j->in_len : j->out_cap;
    if (cluster >= QCOW2_CODEC_OFFLOAD_MIN && vd_co_self()) {
        atomic_fetch_add(&qcow2_codec_offloaded, 1);
        return vd_thread_pool_co_run(qcow2_codec_worker, j);
    }
    return qcow2_codec_worker(j);
}
