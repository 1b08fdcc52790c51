/* msg.c: the mpt message format on msgpack-c.  See msg.h and FORMAT.md.
 *
 * Reading is in two steps.  scan_message() walks the raw msgpack bytes
 * with no allocation at all and finds where one message ends, checking
 * every length it meets against the bytes present and the maximum
 * message size; only a buffer that scanned clean is handed to
 * msgpack_unpack_next(), so msgpack-c never sees a length that lies. */
#include "msg.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <msgpack.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "mpt tensors are little-endian; this build assumes a little-endian host"
#endif

/* ---- dtypes ------------------------------------------------------------- */

static const struct {
    const char *name;
    size_t size;
} dtypes[DT_COUNT] = {
    [DT_F4] = {"<f4", 4}, [DT_F8] = {"<f8", 8}, [DT_F2] = {"<f2", 2},
    [DT_BF16] = {"bf16", 2}, [DT_U1] = {"|u1", 1}, [DT_U2] = {"<u2", 2},
    [DT_I2] = {"<i2", 2}, [DT_I4] = {"<i4", 4}, [DT_I8] = {"<i8", 8},
};

const char *dtype_name(dtype t) { return t < DT_COUNT ? dtypes[t].name : "?"; }
size_t dtype_size(dtype t) { return t < DT_COUNT ? dtypes[t].size : 0; }

int dtype_parse(const char *name, dtype *out)
{
    for (int t = 0; t < DT_COUNT; t++)
        if (strcmp(name, dtypes[t].name) == 0) {
            *out = (dtype)t;
            return 0;
        }
    return -1;
}

/* ---- messages and tensors ---------------------------------------------- */

msg *msg_new(const char *kind)
{
    msg *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    m->v = MSG_VERSION;
    m->meta = value_map();
    m->kind = strdup(kind);
    if (!m->kind) {
        free(m);
        return NULL;
    }
    return m;
}

static void tensor_clear(tensor *t)
{
    free(t->name);
    free(t->data);
    memset(t, 0, sizeof *t);
}

void msg_free(msg *m)
{
    if (!m)
        return;
    for (size_t k = 0; k < m->ntensors; k++)
        tensor_clear(&m->tensors[k]);
    free(m->tensors);
    value_free(&m->meta);
    free(m->kind);
    free(m);
}

/* count = prod(shape) and nbytes, with overflow and sign checks. */
static int shape_size(int ndim, const int64_t *shape, size_t itemsize, size_t *count,
                      size_t *nbytes)
{
    if (ndim < 0 || ndim > MSG_MAX_DIMS)
        return -1;
    size_t c = 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0)
            return -1;
        if (shape[d] > 0 && c > SIZE_MAX / (size_t)shape[d])
            return -1;
        c *= (size_t)shape[d];
    }
    if (itemsize && c > SIZE_MAX / itemsize / 2)
        return -1;
    *count = c;
    *nbytes = c * itemsize;
    return 0;
}

static void *aligned_zalloc(size_t n)
{
    size_t rounded = (n + 63) & ~(size_t)63;
    void *p = aligned_alloc(64, rounded ? rounded : 64);
    if (p)
        memset(p, 0, rounded ? rounded : 64);
    return p;
}

static tensor *tensor_slot(msg *m, const char *name)
{
    for (size_t k = 0; k < m->ntensors; k++)
        if (strcmp(m->tensors[k].name, name) == 0) {
            tensor_clear(&m->tensors[k]);
            return &m->tensors[k];
        }
    if (m->ntensors == m->cap) {
        size_t cap = m->cap ? 2 * m->cap : 8;
        tensor *ts = realloc(m->tensors, cap * sizeof *ts);
        if (!ts)
            return NULL;
        m->tensors = ts;
        m->cap = cap;
    }
    tensor *t = &m->tensors[m->ntensors++];
    memset(t, 0, sizeof *t);
    return t;
}

/* Drops a slot that could not be filled (always the last one or one
 * just cleared): keep the array dense. */
static void tensor_slot_drop(msg *m, tensor *t)
{
    size_t k = (size_t)(t - m->tensors);
    tensor_clear(t);
    memmove(t, t + 1, (m->ntensors - k - 1) * sizeof *t);
    m->ntensors--;
}

tensor *msg_add_tensor(msg *m, const char *name, dtype type, int ndim, const int64_t *shape)
{
    size_t count, nbytes;
    if (type >= DT_COUNT || shape_size(ndim, shape, dtype_size(type), &count, &nbytes) < 0)
        return NULL;
    tensor *t = tensor_slot(m, name);
    if (!t)
        return NULL;
    t->name = strdup(name);
    t->data = aligned_zalloc(nbytes);
    if (!t->name || !t->data) {
        tensor_slot_drop(m, t);
        return NULL;
    }
    t->dtype = type;
    t->ndim = ndim;
    for (int d = 0; d < ndim; d++)
        t->shape[d] = shape[d];
    t->count = count;
    t->nbytes = nbytes;
    return t;
}

tensor *msg_add_tensor_copy(msg *m, const char *name, dtype type, int ndim,
                            const int64_t *shape, const void *data)
{
    tensor *t = msg_add_tensor(m, name, type, ndim, shape);
    if (t && t->nbytes)
        memcpy(t->data, data, t->nbytes);
    return t;
}

const tensor *msg_get_tensor(const msg *m, const char *name)
{
    for (size_t k = 0; k < m->ntensors; k++)
        if (strcmp(m->tensors[k].name, name) == 0)
            return &m->tensors[k];
    return NULL;
}

const tensor *msg_require_tensor(const msg *m, const char *name, dtype type, int ndim,
                                 gd_err *err)
{
    const tensor *t = msg_get_tensor(m, name);
    if (!t) {
        gd_errf(err, "%s message has no tensor \"%s\"", m->kind, name);
        return NULL;
    }
    if (t->dtype != type) {
        gd_errf(err, "tensor \"%s\": dtype is %s, expected %s", name, dtype_name(t->dtype),
                dtype_name(type));
        return NULL;
    }
    if (ndim >= 0 && t->ndim != ndim) {
        gd_errf(err, "tensor \"%s\": has %d dimensions, expected %d", name, t->ndim, ndim);
        return NULL;
    }
    return t;
}

/* ---- writing ------------------------------------------------------------ */

static int pack_value(msgpack_packer *pk, const value *v)
{
    switch (v->type) {
    case V_NIL:
        return msgpack_pack_nil(pk);
    case V_BOOL:
        return v->u.b ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
    case V_INT:
        return msgpack_pack_int64(pk, v->u.i);
    case V_FLOAT:
        return msgpack_pack_double(pk, v->u.f);
    case V_STR:
        return msgpack_pack_str_with_body(pk, v->u.s, strlen(v->u.s));
    case V_ARRAY:
        if (msgpack_pack_array(pk, v->u.c.n) < 0)
            return -1;
        for (size_t k = 0; k < v->u.c.n; k++)
            if (pack_value(pk, &v->u.c.items[k]) < 0)
                return -1;
        return 0;
    case V_MAP:
        if (msgpack_pack_map(pk, v->u.c.n) < 0)
            return -1;
        for (size_t k = 0; k < v->u.c.n; k++)
            if (msgpack_pack_str_with_body(pk, v->u.c.keys[k], strlen(v->u.c.keys[k])) < 0 ||
                pack_value(pk, &v->u.c.items[k]) < 0)
                return -1;
        return 0;
    }
    return -1;
}

static int pack_cstr(msgpack_packer *pk, const char *s)
{
    return msgpack_pack_str_with_body(pk, s, strlen(s));
}

static int packer_write(void *data, const char *buf, size_t len)
{
    return outbuf_write(data, buf, len);
}

/* Tensor data is passed straight to the output buffer, which writes large
 * blocks without copying them. */
static int pack_message(msgpack_packer *pk, const msg *m)
{
    int rc = msgpack_pack_map(pk, 4);
    rc |= pack_cstr(pk, "v") | msgpack_pack_int(pk, m->v);
    rc |= pack_cstr(pk, "kind") | pack_cstr(pk, m->kind);
    rc |= pack_cstr(pk, "meta") | pack_value(pk, &m->meta);
    rc |= pack_cstr(pk, "tensors") | msgpack_pack_map(pk, m->ntensors);
    for (size_t k = 0; rc == 0 && k < m->ntensors; k++) {
        const tensor *t = &m->tensors[k];
        rc |= pack_cstr(pk, t->name) | msgpack_pack_map(pk, 3);
        rc |= pack_cstr(pk, "dtype") | pack_cstr(pk, dtype_name(t->dtype));
        rc |= pack_cstr(pk, "shape") | msgpack_pack_array(pk, (size_t)t->ndim);
        for (int d = 0; d < t->ndim; d++)
            rc |= msgpack_pack_int64(pk, t->shape[d]);
        rc |= pack_cstr(pk, "data") | msgpack_pack_bin_with_body(pk, t->data, t->nbytes);
    }
    return rc ? -1 : 0;
}

static int write_messages(int fd, msg *const *msgs, size_t n, gd_err *err)
{
    outbuf ob;
    outbuf_init(&ob, fd);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &ob, packer_write);
    for (size_t k = 0; k < n; k++)
        if (pack_message(&pk, msgs[k]) < 0)
            break;
    outbuf_flush(&ob);
    if (ob.error) {
        errno = ob.error;
        return gd_errno(err, "write");
    }
    return 0;
}

int msg_write_fd(int fd, const msg *m, gd_err *err)
{
    msg *const one[1] = {(msg *)m};
    return write_messages(fd, one, 1, err);
}

struct msg_file {
    atomic_file af;
};

msg_file *msg_file_create(const char *path, gd_err *err)
{
    msg_file *f = calloc(1, sizeof *f);
    if (!f) {
        gd_errf(err, "out of memory");
        return NULL;
    }
    if (atomic_open(&f->af, path, err) < 0) {
        free(f);
        return NULL;
    }
    return f;
}

int msg_file_put(msg_file *f, const msg *m, gd_err *err)
{
    if (msg_write_fd(f->af.fd, m, err) < 0)
        return gd_err_prefix(err, "%s", f->af.path);
    return 0;
}

int msg_file_commit(msg_file *f, gd_err *err)
{
    int rc = atomic_commit(&f->af, err);
    free(f);
    return rc;
}

void msg_file_abort(msg_file *f)
{
    if (!f)
        return;
    atomic_abort(&f->af);
    free(f);
}

int msg_write_file(const char *path, msg *const *msgs, size_t n, gd_err *err)
{
    if (strcmp(path, "-") == 0)
        return write_messages(STDOUT_FILENO, msgs, n, err) < 0
                   ? gd_err_prefix(err, "standard output")
                   : 0;
    msg_file *f = msg_file_create(path, err);
    if (!f)
        return -1;
    if (write_messages(f->af.fd, msgs, n, err) < 0) {
        msg_file_abort(f);
        return gd_err_prefix(err, "%s", path);
    }
    return msg_file_commit(f, err);
}

/* ---- scanning: where does the message end? ------------------------------ */

typedef enum { SCAN_DONE, SCAN_MORE, SCAN_BAD } scan_status;

/* Resumable: the state survives a SCAN_MORE, and the next call goes on
 * from the first object that was not complete. */
typedef struct {
    size_t pos;                          /* start of the next object */
    int depth;                           /* open containers */
    uint64_t left[MSG_MAX_DEPTH + 1];    /* objects still to read per level */
} scanner;

static void scanner_reset(scanner *s)
{
    memset(s, 0, sizeof *s);
    s->left[0] = 1;
}

static uint64_t load_be(const unsigned char *p, int n)
{
    uint64_t x = 0;
    for (int k = 0; k < n; k++)
        x = x << 8 | p[k];
    return x;
}

/* Decodes one msgpack header at buf[0..avail): how many bytes the header
 * takes, how many payload bytes follow it, how many child objects it
 * opens.  Returns 0, or 1 when more bytes are needed, or -1 on a byte
 * that is no msgpack type. */
static int object_header(const unsigned char *buf, size_t avail, size_t *hdr, uint64_t *payload,
                         uint64_t *children)
{
    if (avail < 1)
        return 1;
    unsigned b = buf[0];
    int lenbytes = 0;   /* size of a following length field */
    int fixed = 0;      /* payload of fixed size */
    int kind = 0;       /* 0 scalar/raw, 1 array, 2 map */
    *payload = 0;
    *children = 0;
    if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) {
        *hdr = 1;
        return 0;
    }
    if (b >= 0x80 && b <= 0x8f) { *hdr = 1; *children = 2 * (uint64_t)(b & 0x0f); return 0; }
    if (b >= 0x90 && b <= 0x9f) { *hdr = 1; *children = b & 0x0f; return 0; }
    if (b >= 0xa0 && b <= 0xbf) { *hdr = 1; *payload = b & 0x1f; return 0; }
    switch (b) {
    case 0xc4: case 0xd9: lenbytes = 1; break;              /* bin8, str8 */
    case 0xc5: case 0xda: lenbytes = 2; break;              /* bin16, str16 */
    case 0xc6: case 0xdb: lenbytes = 4; break;              /* bin32, str32 */
    case 0xc7: lenbytes = 1; fixed = 1; break;              /* ext8: len + type */
    case 0xc8: lenbytes = 2; fixed = 1; break;
    case 0xc9: lenbytes = 4; fixed = 1; break;
    case 0xca: case 0xce: case 0xd2: fixed = 4; break;      /* float32, u32, i32 */
    case 0xcb: case 0xcf: case 0xd3: fixed = 8; break;
    case 0xcc: case 0xd0: fixed = 1; break;
    case 0xcd: case 0xd1: fixed = 2; break;
    case 0xd4: fixed = 2; break;                            /* fixext: type + data */
    case 0xd5: fixed = 3; break;
    case 0xd6: fixed = 5; break;
    case 0xd7: fixed = 9; break;
    case 0xd8: fixed = 17; break;
    case 0xdc: lenbytes = 2; kind = 1; break;               /* array16 */
    case 0xdd: lenbytes = 4; kind = 1; break;
    case 0xde: lenbytes = 2; kind = 2; break;               /* map16 */
    case 0xdf: lenbytes = 4; kind = 2; break;
    default:
        return -1;                                          /* 0xc1 */
    }
    if (avail < 1 + (size_t)lenbytes)
        return 1;
    uint64_t n = lenbytes ? load_be(buf + 1, lenbytes) : 0;
    *hdr = 1 + (size_t)lenbytes;
    if (kind == 1)
        *children = n;
    else if (kind == 2)
        *children = 2 * n;
    else
        *payload = n + (uint64_t)fixed;
    return 0;
}

/* SCAN_DONE: the message is buf[0..s->pos).  SCAN_MORE: *need is the
 * least total number of bytes before anything new can be learnt. */
static scan_status scan_message(scanner *s, const unsigned char *buf, size_t len, size_t max,
                                size_t *need, gd_err *err)
{
    for (;;) {
        while (s->depth > 0 && s->left[s->depth] == 0)
            s->depth--;
        if (s->left[s->depth] == 0)
            return SCAN_DONE;
        size_t hdr;
        uint64_t payload, children;
        int rc = object_header(buf + s->pos, len - s->pos, &hdr, &payload, &children);
        if (rc < 0) {
            gd_errf(err, "malformed msgpack (byte 0x%02x at offset %zu)", buf[s->pos], s->pos);
            return SCAN_BAD;
        }
        /* Every child takes at least one byte, every payload its length:
         * neither can exceed what is left of the maximum size. */
        uint64_t room = max > s->pos ? max - s->pos : 0;
        if (rc == 0 && (hdr + payload > room || children > room)) {
            gd_errf(err, "at offset %zu a length of %llu exceeds the maximum message size (%zu bytes)",
                    s->pos, (unsigned long long)(children > room ? children : payload), max);
            return SCAN_BAD;
        }
        if (rc == 1 || hdr + payload > len - s->pos) {
            *need = rc == 1 ? len + 1 : s->pos + hdr + (size_t)payload;
            if (*need > max)
                *need = max + 1;
            return SCAN_MORE;
        }
        s->left[s->depth]--;
        s->pos += hdr + (size_t)payload;
        if (children) {
            if (s->depth == MSG_MAX_DEPTH) {
                gd_errf(err, "nested deeper than %d levels", MSG_MAX_DEPTH);
                return SCAN_BAD;
            }
            s->left[++s->depth] = children;
        }
    }
}

/* ---- decoding a scanned buffer ------------------------------------------ */

static bool obj_is_str(const msgpack_object *o, const char *s)
{
    size_t n = strlen(s);
    return o->type == MSGPACK_OBJECT_STR && o->via.str.size == n && memcmp(o->via.str.ptr, s, n) == 0;
}

static char *obj_strdup(const msgpack_object *o)
{
    const char *p = o->type == MSGPACK_OBJECT_STR ? o->via.str.ptr : o->via.bin.ptr;
    size_t n = o->type == MSGPACK_OBJECT_STR ? o->via.str.size : o->via.bin.size;
    if (memchr(p, 0, n))
        return NULL; /* an embedded NUL would silently shorten the text */
    char *s = malloc(n + 1);
    if (s) {
        memcpy(s, p, n);
        s[n] = 0;
    }
    return s;
}

static const msgpack_object *map_lookup(const msgpack_object *map, const char *key)
{
    for (uint32_t k = 0; k < map->via.map.size; k++)
        if (obj_is_str(&map->via.map.ptr[k].key, key))
            return &map->via.map.ptr[k].val;
    return NULL;
}

static int to_value(const msgpack_object *o, value *out, gd_err *err)
{
    *out = (value){.type = V_NIL};
    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        return 0;
    case MSGPACK_OBJECT_BOOLEAN:
        *out = (value){.type = V_BOOL, .u.b = o->via.boolean};
        return 0;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        if (o->via.u64 > INT64_MAX) /* keep the magnitude rather than wrap */
            *out = (value){.type = V_FLOAT, .u.f = (double)o->via.u64};
        else
            *out = (value){.type = V_INT, .u.i = (int64_t)o->via.u64};
        return 0;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        *out = (value){.type = V_INT, .u.i = o->via.i64};
        return 0;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        *out = (value){.type = V_FLOAT, .u.f = o->via.f64};
        return 0;
    case MSGPACK_OBJECT_STR:
        out->u.s = obj_strdup(o);
        if (!out->u.s)
            return gd_errf(err, "meta: string with an embedded NUL byte");
        out->type = V_STR;
        return 0;
    case MSGPACK_OBJECT_ARRAY:
        *out = value_array();
        for (uint32_t k = 0; k < o->via.array.size; k++) {
            value item;
            if (to_value(&o->via.array.ptr[k], &item, err) < 0 || !value_push(out, item))
                goto fail;
        }
        return 0;
    case MSGPACK_OBJECT_MAP:
        *out = value_map();
        for (uint32_t k = 0; k < o->via.map.size; k++) {
            const msgpack_object_kv *kv = &o->via.map.ptr[k];
            if (kv->key.type != MSGPACK_OBJECT_STR) {
                gd_errf(err, "meta: map key is not a string");
                goto fail;
            }
            char *key = obj_strdup(&kv->key);
            value item;
            if (!key) {
                gd_errf(err, "meta: key with an embedded NUL byte");
                goto fail;
            }
            int rc = to_value(&kv->val, &item, err);
            if (rc == 0 && !value_set(out, key, item))
                rc = gd_errf(err, "out of memory");
            free(key);
            if (rc < 0)
                goto fail;
        }
        return 0;
    default: /* bin and ext carry no meaning in meta: read as nil */
        return 0;
    }
fail:
    value_free(out);
    return -1;
}

static int decode_tensor(msg *m, const msgpack_object *key, const msgpack_object *val, gd_err *err)
{
    if (key->type != MSGPACK_OBJECT_STR)
        return gd_errf(err, "tensor name is not a string");
    char *name = obj_strdup(key);
    if (!name)
        return gd_errf(err, "tensor name with an embedded NUL byte");
    int rc = -1;
    if (val->type != MSGPACK_OBJECT_MAP) {
        gd_errf(err, "tensor \"%s\": not a map", name);
        goto out;
    }
    const msgpack_object *odt = map_lookup(val, "dtype"), *oshape = map_lookup(val, "shape"),
                         *odata = map_lookup(val, "data");
    if (!odt || !oshape || !odata) {
        gd_errf(err, "tensor \"%s\": missing key \"%s\"", name,
                !odt ? "dtype" : !oshape ? "shape" : "data");
        goto out;
    }
    char dtname[16] = "";
    dtype type;
    if (odt->type != MSGPACK_OBJECT_STR || odt->via.str.size >= sizeof dtname) {
        gd_errf(err, "tensor \"%s\": dtype is not a known dtype string", name);
        goto out;
    }
    memcpy(dtname, odt->via.str.ptr, odt->via.str.size);
    if (dtype_parse(dtname, &type) < 0) {
        gd_errf(err, "tensor \"%s\": unknown dtype \"%s\"", name, dtname);
        goto out;
    }
    if (oshape->type != MSGPACK_OBJECT_ARRAY || oshape->via.array.size > MSG_MAX_DIMS) {
        gd_errf(err, "tensor \"%s\": shape is not an array of at most %d integers", name,
                MSG_MAX_DIMS);
        goto out;
    }
    int64_t shape[MSG_MAX_DIMS];
    int ndim = (int)oshape->via.array.size;
    for (int d = 0; d < ndim; d++) {
        const msgpack_object *e = &oshape->via.array.ptr[d];
        if (e->type != MSGPACK_OBJECT_POSITIVE_INTEGER || e->via.u64 > INT64_MAX) {
            gd_errf(err, "tensor \"%s\": shape[%d] is not a non-negative integer", name, d);
            goto out;
        }
        shape[d] = (int64_t)e->via.u64;
    }
    if (odata->type != MSGPACK_OBJECT_BIN && odata->type != MSGPACK_OBJECT_STR) {
        gd_errf(err, "tensor \"%s\": data is not binary", name);
        goto out;
    }
    size_t have = odata->type == MSGPACK_OBJECT_BIN ? odata->via.bin.size : odata->via.str.size;
    const void *bytes = odata->type == MSGPACK_OBJECT_BIN ? odata->via.bin.ptr : odata->via.str.ptr;
    size_t count, nbytes;
    if (shape_size(ndim, shape, dtype_size(type), &count, &nbytes) < 0) {
        gd_errf(err, "tensor \"%s\": shape overflows", name);
        goto out;
    }
    if (have != nbytes) {
        gd_errf(err, "tensor \"%s\": data is %zu bytes, shape needs %zu", name, have, nbytes);
        goto out;
    }
    if (msg_get_tensor(m, name)) {
        gd_errf(err, "tensor \"%s\" appears twice", name);
        goto out;
    }
    if (!msg_add_tensor_copy(m, name, type, ndim, shape, bytes)) {
        gd_errf(err, "tensor \"%s\": out of memory for %zu bytes", name, nbytes);
        goto out;
    }
    rc = 0;
out:
    free(name);
    return rc;
}

static msg *decode_object(const msgpack_object *root, gd_err *err)
{
    if (root->type != MSGPACK_OBJECT_MAP) {
        gd_errf(err, "not a message (a map was expected)");
        return NULL;
    }
    const msgpack_object *ov = map_lookup(root, "v"), *okind = map_lookup(root, "kind"),
                         *ometa = map_lookup(root, "meta"), *otensors = map_lookup(root, "tensors");
    if (!ov || !okind || !otensors) {
        gd_errf(err, "missing key \"%s\"", !ov ? "v" : !okind ? "kind" : "tensors");
        return NULL;
    }
    if (ov->type != MSGPACK_OBJECT_POSITIVE_INTEGER || ov->via.u64 < 1) {
        gd_errf(err, "\"v\" is not a positive integer");
        return NULL;
    }
    if (ov->via.u64 > MSG_VERSION) {
        gd_errf(err, "format version %llu is newer than this program reads (%d)",
                (unsigned long long)ov->via.u64, MSG_VERSION);
        return NULL;
    }
    if (okind->type != MSGPACK_OBJECT_STR) {
        gd_errf(err, "\"kind\" is not a string");
        return NULL;
    }
    if (otensors->type != MSGPACK_OBJECT_MAP) {
        gd_errf(err, "\"tensors\" is not a map");
        return NULL;
    }
    if (ometa && ometa->type != MSGPACK_OBJECT_MAP && ometa->type != MSGPACK_OBJECT_NIL) {
        gd_errf(err, "\"meta\" is not a map");
        return NULL;
    }
    char *kind = obj_strdup(okind);
    msg *m = kind ? msg_new(kind) : NULL;
    free(kind);
    if (!m) {
        gd_errf(err, "\"kind\" is not a valid string");
        return NULL;
    }
    m->v = (int)ov->via.u64;
    if (ometa && ometa->type == MSGPACK_OBJECT_MAP) {
        value_free(&m->meta);
        if (to_value(ometa, &m->meta, err) < 0)
            goto fail;
    }
    for (uint32_t k = 0; k < otensors->via.map.size; k++)
        if (decode_tensor(m, &otensors->via.map.ptr[k].key, &otensors->via.map.ptr[k].val, err) < 0)
            goto fail;
    return m;
fail:
    msg_free(m);
    return NULL;
}

/* buf[0..len) has already been scanned as exactly one object. */
static msg *decode_scanned(const void *buf, size_t len, gd_err *err)
{
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    msgpack_unpack_return rc = msgpack_unpack_next(&up, buf, len, &off);
    msg *m = NULL;
    if (rc == MSGPACK_UNPACK_NOMEM_ERROR)
        gd_errf(err, "out of memory while unpacking");
    else if (rc != MSGPACK_UNPACK_SUCCESS || off != len)
        gd_errf(err, "malformed msgpack");
    else
        m = decode_object(&up.data, err);
    msgpack_unpacked_destroy(&up);
    return m;
}

msg *msg_decode(const void *buf, size_t len, gd_err *err)
{
    scanner s;
    scanner_reset(&s);
    size_t need = 0;
    scan_status st = scan_message(&s, buf, len, len, &need, err);
    if (st == SCAN_MORE) {
        gd_errf(err, "truncated message (%zu bytes, at least %zu needed)", len, need);
        return NULL;
    }
    if (st == SCAN_BAD)
        return NULL;
    if (s.pos != len) {
        gd_errf(err, "%zu bytes of trailing data after the message", len - s.pos);
        return NULL;
    }
    return decode_scanned(buf, len, err);
}

/* ---- the stream reader -------------------------------------------------- */

struct msg_reader {
    int fd;                  /* -1 when reading from memory */
    bool own_fd;
    char *name;
    unsigned char *buf;      /* bytes not yet consumed start at buf + start */
    size_t start, len, cap;
    bool eof;
    bool mem;
    size_t max_bytes;
    size_t count;            /* messages returned */
};

size_t msg_default_max_bytes(void)
{
    const char *env = getenv("GEODINO_MAX_MESSAGE");
    if (!env || !*env)
        return MSG_DEFAULT_MAX_BYTES;
    char *end;
    errno = 0;
    unsigned long long n = strtoull(env, &end, 10);
    unsigned shift = 0;
    if (*end == 'K' || *end == 'k') shift = 10;
    else if (*end == 'M' || *end == 'm') shift = 20;
    else if (*end == 'G' || *end == 'g') shift = 30;
    if (shift)
        end++;
    if (errno || *end || n == 0 || n > (SIZE_MAX >> 1 >> shift))
        return MSG_DEFAULT_MAX_BYTES;
    return (size_t)n << shift;
}

static msg_reader *reader_new(const char *name, gd_err *err)
{
    msg_reader *r = calloc(1, sizeof *r);
    if (r)
        r->name = strdup(name);
    if (!r || !r->name) {
        free(r);
        gd_errf(err, "out of memory");
        return NULL;
    }
    r->fd = -1;
    r->max_bytes = msg_default_max_bytes();
    return r;
}

msg_reader *msg_reader_from_fd(int fd, const char *name, gd_err *err)
{
    msg_reader *r = reader_new(name, err);
    if (r)
        r->fd = fd;
    return r;
}

msg_reader *msg_reader_open(const char *path, gd_err *err)
{
    if (strcmp(path, "-") == 0)
        return msg_reader_from_fd(STDIN_FILENO, "standard input", err);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        gd_errno(err, path);
        return NULL;
    }
    msg_reader *r = msg_reader_from_fd(fd, path, err);
    if (!r)
        close(fd);
    else
        r->own_fd = true;
    return r;
}

msg_reader *msg_reader_from_mem(const void *buf, size_t len, const char *name, gd_err *err)
{
    msg_reader *r = reader_new(name, err);
    if (!r)
        return NULL;
    r->mem = true;
    r->eof = true;
    r->buf = (unsigned char *)buf;
    r->len = r->cap = len;
    return r;
}

void msg_reader_set_max_bytes(msg_reader *r, size_t max_bytes) { r->max_bytes = max_bytes; }
size_t msg_reader_count(const msg_reader *r) { return r->count; }

void msg_reader_close(msg_reader *r)
{
    if (!r)
        return;
    if (r->own_fd)
        close(r->fd);
    if (!r->mem)
        free(r->buf);
    free(r->name);
    free(r);
}

/* Reads until at least `want` unconsumed bytes are buffered or input
 * ends.  The buffer grows with what really arrives (at most doubling),
 * never with what a length field claims. */
static int reader_fill(msg_reader *r, size_t want, gd_err *err)
{
    if (r->mem)
        return 0; /* all of it is there, and the caller's buffer is not ours to move */
    if (r->start > 0 && r->start == r->len) {
        r->start = r->len = 0;
    } else if (r->start > 0 && r->start >= r->cap / 2) {
        memmove(r->buf, r->buf + r->start, r->len - r->start);
        r->len -= r->start;
        r->start = 0;
    }
    while (!r->eof && r->len - r->start < want) {
        if (r->len == r->cap) {
            size_t cap = r->cap ? 2 * r->cap : 1 << 16;
            unsigned char *nb = realloc(r->buf, cap);
            if (!nb)
                return gd_errf(err, "out of memory buffering %zu bytes", cap);
            r->buf = nb;
            r->cap = cap;
        }
        ssize_t got = read(r->fd, r->buf + r->len, r->cap - r->len);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            return gd_errno(err, "read");
        if (got == 0)
            r->eof = true;
        r->len += (size_t)got;
    }
    return 0;
}

int msg_reader_next(msg_reader *r, msg **out, gd_err *err)
{
    *out = NULL;
    size_t index = r->count + 1;
    scanner s;
    scanner_reset(&s);
    if (reader_fill(r, 1, err) < 0)
        return gd_err_prefix(err, "%s: message %zu", r->name, index);
    if (r->len == r->start)
        return 0; /* clean end at a message boundary */
    for (;;) {
        size_t avail = r->len - r->start, need = 0;
        scan_status st = scan_message(&s, r->buf + r->start, avail, r->max_bytes, &need, err);
        if (st == SCAN_BAD)
            return gd_err_prefix(err, "%s: message %zu", r->name, index);
        if (st == SCAN_DONE)
            break;
        if (need > r->max_bytes)
            return gd_errf(err, "%s: message %zu: larger than the maximum message size (%zu bytes)",
                           r->name, index, r->max_bytes);
        if (r->eof)
            return gd_errf(err, "%s: message %zu: truncated (input ends after %zu bytes of it)",
                           r->name, index, avail);
        if (reader_fill(r, need, err) < 0)
            return gd_err_prefix(err, "%s: message %zu", r->name, index);
    }
    msg *m = decode_scanned(r->buf + r->start, s.pos, err);
    if (!m)
        return gd_err_prefix(err, "%s: message %zu", r->name, index);
    r->start += s.pos;
    r->count++;
    *out = m;
    return 1;
}

msg *msg_read_one(const char *path, const char *kind, gd_err *err)
{
    msg_reader *r = msg_reader_open(path, err);
    if (!r)
        return NULL;
    msg *m = NULL, *extra = NULL;
    int rc = msg_reader_next(r, &m, err);
    if (rc == 0) {
        rc = gd_errf(err, "%s: holds no message", path);
    } else if (rc == 1 && kind && strcmp(m->kind, kind) != 0) {
        rc = gd_errf(err, "%s: message 1: is a \"%s\" message, expected \"%s\"", path, m->kind,
                     kind);
    } else if (rc == 1) {
        int next = msg_reader_next(r, &extra, err);
        if (next == 1)
            rc = gd_errf(err, "%s: holds more than one message", path);
        else if (next < 0)
            rc = -1;
    }
    msg_free(extra);
    msg_reader_close(r);
    if (rc != 1) {
        msg_free(m);
        return NULL;
    }
    return m;
}
