/* The format is a contract with Python: files written by msgpack + numpy
 * are read here, and ours are read there with FORMAT.md's snippet. */
#include <stdlib.h>
#include <string.h>

#include "msg.h"
#include "test.h"

/* Python writes one tensor per dtype with values k * 3 - 7 (k = 0..11,
 * shape [3, 4]; unsigned types add 7); bf16 holds the upper halves of those float32 values. */
static const char *py_writer =
    "import msgpack, numpy as np, sys\n"
    "k = np.arange(12).reshape(3, 4) * 3 - 7\n"
    "t = {}\n"
    "for dt in ['<f4', '<f8', '<f2', '<i2', '<i4', '<i8']:\n"
    "    t[dt] = k.astype(dt)\n"
    "t['|u1'] = (k + 7).astype('|u1')\n"
    "t['<u2'] = (k + 7).astype('<u2')\n"
    "bf = (k.astype('<f4').view('<u4') >> 16).astype('<u2')\n"
    "tensors = {n: {'dtype': n, 'shape': list(a.shape), 'data': a.tobytes()} for n, a in t.items()}\n"
    "tensors['bf16'] = {'dtype': 'bf16', 'shape': [3, 4], 'data': bf.tobytes()}\n"
    "msg = {'v': 1, 'kind': 'batch', 'meta': {'epoch': 3, 'files': ['a.tif', 'b.tif'],\n"
    "       'cfg': {'lr': 0.5, 'ok': True, 'none': None}, 'future_key': [1, 2]},\n"
    "       'tensors': tensors, 'unknown_top_level': 1}\n"
    "with open(sys.argv[1], 'wb') as f:\n"
    "    for i in range(2):\n"
    "        msg['meta']['index'] = i\n"
    "        f.write(msgpack.packb(msg, use_bin_type=True))\n";

static double as_double(const tensor *t, size_t i)
{
    switch (t->dtype) {
    case DT_F4: return ((float *)t->data)[i];
    case DT_F8: return ((double *)t->data)[i];
    case DT_U1: return ((uint8_t *)t->data)[i];
    case DT_U2: return ((uint16_t *)t->data)[i];
    case DT_I2: return ((int16_t *)t->data)[i];
    case DT_I4: return ((int32_t *)t->data)[i];
    case DT_I8: return (double)((int64_t *)t->data)[i];
    case DT_BF16: {
        uint32_t bits = (uint32_t)((uint16_t *)t->data)[i] << 16;
        float f;
        memcpy(&f, &bits, 4);
        return f;
    }
    case DT_F2: { /* half precision: small integers are exact */
        uint16_t h = ((uint16_t *)t->data)[i];
        int e = (h >> 10) & 31, m = h & 1023, s = h >> 15;
        double v = e == 0 ? ldexp(m, -24) : ldexp(m + 1024, e - 25);
        return s ? -v : v;
    }
    default: return NAN;
    }
}

TEST(interop_python_writes_c_reads)
{
    const char *script = test_path("writer.py"), *out = test_path("py.mpt");
    FILE *f = fopen(script, "w");
    CHECK(f);
    fputs(py_writer, f);
    fclose(f);
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 '%s' '%s'", script, out);
    CHECK(system(cmd) == 0);
    gd_err err;
    msg_reader *r = msg_reader_open(out, &err);
    CHECK_MSG(r, "%s", err.msg);
    msg *m;
    int n = 0;
    while (msg_reader_next(r, &m, &err) == 1) {
        CHECK(strcmp(m->kind, "batch") == 0 && m->ntensors == 9);
        CHECK(value_int(&m->meta, "index", -1) == n);
        CHECK(value_int(&m->meta, "epoch", 0) == 3);
        CHECK(value_float(&m->meta, "cfg/lr", 0) == 0.5 && value_bool(&m->meta, "cfg/ok", false));
        CHECK(value_get(&m->meta, "cfg/none")->type == V_NIL);
        CHECK(strcmp(value_get(&m->meta, "files")->u.c.items[1].u.s, "b.tif") == 0);
        for (size_t k = 0; k < m->ntensors; k++) {
            const tensor *t = &m->tensors[k];
            CHECK(t->ndim == 2 && t->shape[0] == 3 && t->shape[1] == 4);
            CHECK(strcmp(t->name, dtype_name(t->dtype)) == 0);
            for (size_t i = 0; i < 12; i++) {
                double want = (double)i * 3 - 7 + (t->dtype == DT_U1 || t->dtype == DT_U2 ? 7 : 0);
                CHECK_MSG(as_double(t, i) == want, "%s[%zu] = %g, want %g", t->name, i,
                          as_double(t, i), want);
            }
        }
        msg_free(m);
        n++;
    }
    CHECK_MSG(n == 2, "read %d messages: %s", n, err.msg);
    msg_reader_close(r);
}

/* FORMAT.md's snippet, verbatim in its loop, then checks. */
static const char *py_reader =
    "import msgpack, numpy as np, sys\n"
    "seen = []\n"
    "for msg in msgpack.Unpacker(open(sys.argv[1], 'rb'), raw=False, max_buffer_size=2**31):\n"
    "    for name, t in msg['tensors'].items():\n"
    "        a = np.frombuffer(t['data'], dtype=t['dtype'] if t['dtype'] != 'bf16' else '<u2').reshape(t['shape'])\n"
    "        seen.append((msg['kind'], name, a))\n"
    "k, name, a = seen[0]\n"
    "assert k == 'checkpoint' and name == 'student/w' and a.dtype == np.float32, (k, name, a.dtype)\n"
    "assert a.shape == (2, 3) and a.tolist() == [[0, 0.5, 1], [1.5, 2, 2.5]], a\n"
    "k, name, a = seen[1]\n"
    "assert name == 'labels' and a.dtype == np.int32 and a.tolist() == [-1, 7], a\n"
    "k, name, a = seen[2]\n"
    "assert name == 'scalar' and a.shape == () and float(a) == 42.0\n"
    "assert len(seen) == 3\n";

TEST(interop_c_writes_python_reads)
{
    msg *m = msg_new("checkpoint");
    tensor *w = msg_add_tensor(m, "student/w", DT_F4, 2, (int64_t[]){2, 3});
    for (int i = 0; i < 6; i++)
        ((float *)w->data)[i] = 0.5f * (float)i;
    tensor *l = msg_add_tensor(m, "labels", DT_I4, 1, (int64_t[]){2});
    ((int32_t *)l->data)[0] = -1;
    ((int32_t *)l->data)[1] = 7;
    value_set_int(&m->meta, "step", 12);
    msg *m2 = msg_new("features");
    tensor *s = msg_add_tensor(m2, "scalar", DT_F8, 0, NULL);
    *(double *)s->data = 42.0;
    msg *both[2] = {m, m2};
    gd_err err;
    const char *out = test_path("c.mpt"), *script = test_path("reader.py");
    CHECK(msg_write_file(out, both, 2, &err) == 0);
    FILE *f = fopen(script, "w");
    CHECK(f);
    fputs(py_reader, f);
    fclose(f);
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 '%s' '%s'", script, out);
    CHECK(system(cmd) == 0);
    msg_free(m);
    msg_free(m2);
}
