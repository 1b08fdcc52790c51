/* Tensor messages: round trips, streams, and every kind of bad input. */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "msg.h"
#include "test.h"

static msg *sample_message(void)
{
    msg *m = msg_new("batch");
    for (int t = 0; t < DT_COUNT; t++) {
        char name[32];
        snprintf(name, sizeof name, "t%d", t);
        tensor *x = msg_add_tensor(m, name, (dtype)t, 2, (int64_t[]){3, 5});
        unsigned char *p = x->data;
        for (size_t k = 0; k < x->nbytes; k++)
            p[k] = (unsigned char)(k * 7 + t);
    }
    msg_add_tensor(m, "scalar", DT_F8, 0, NULL);
    msg_add_tensor(m, "empty", DT_F4, 2, (int64_t[]){0, 4});
    value_set_str(&m->meta, "tool", "test");
    value_set_int(&m->meta, "step", -42);
    value_set_float(&m->meta, "lr", 5e-4);
    value_set_bool(&m->meta, "flag", true);
    value *cfg = value_set_map(&m->meta, "config");
    value_set_str(cfg, "arch", "vit_small");
    value *inner = value_set_map(cfg, "inner");
    value_set_int(inner, "depth", 12);
    const char *names[] = {"B1", "B2", "B3"};
    value_set_strs(&m->meta, "bands", names, 3);
    return m;
}

static int same_message(const msg *a, const msg *b)
{
    if (strcmp(a->kind, b->kind) || a->ntensors != b->ntensors)
        return 0;
    for (size_t k = 0; k < a->ntensors; k++) {
        const tensor *x = &a->tensors[k], *y = msg_get_tensor(b, x->name);
        if (!y || x->dtype != y->dtype || x->ndim != y->ndim || x->nbytes != y->nbytes)
            return 0;
        if (memcmp(x->shape, y->shape, sizeof(int64_t) * (size_t)x->ndim))
            return 0;
        if (x->nbytes && memcmp(x->data, y->data, x->nbytes))
            return 0;
    }
    return 1;
}

static void check_meta(const msg *m)
{
    CHECK(strcmp(value_str(&m->meta, "tool", ""), "test") == 0);
    CHECK(value_int(&m->meta, "step", 0) == -42);
    CHECK(value_float(&m->meta, "lr", 0) == 5e-4);
    CHECK(value_bool(&m->meta, "flag", false));
    CHECK(strcmp(value_str(&m->meta, "config/arch", ""), "vit_small") == 0);
    CHECK(value_int(&m->meta, "config/inner/depth", 0) == 12);
    const value *bands = value_get(&m->meta, "bands");
    CHECK(bands && bands->type == V_ARRAY && bands->u.c.n == 3);
    CHECK(strcmp(bands->u.c.items[2].u.s, "B3") == 0);
    CHECK(value_get(&m->meta, "config/missing") == NULL);
    CHECK(value_int(&m->meta, "config/arch", 7) == 7); /* wrong type: default */
}

/* Writes `m` n times into a file and returns its bytes. */
static unsigned char *encode(msg *m, int n, size_t *len)
{
    const char *path = test_path("enc.mpt");
    msg *many[8];
    for (int k = 0; k < n; k++)
        many[k] = m;
    gd_err err;
    if (msg_write_file(path, many, (size_t)n, &err) < 0)
        return NULL;
    FILE *fp = fopen(path, "rb");
    fseek(fp, 0, SEEK_END);
    *len = (size_t)ftell(fp);
    rewind(fp);
    unsigned char *buf = malloc(*len);
    if (fread(buf, 1, *len, fp) != *len) {
        free(buf);
        buf = NULL;
    }
    fclose(fp);
    return buf;
}

TEST(msg_roundtrip_file)
{
    msg *m = sample_message();
    gd_err err;
    const char *path = test_path("round.mpt");
    CHECK(msg_write_file(path, &m, 1, &err) == 0);
    msg *back = msg_read_one(path, "batch", &err);
    CHECK_MSG(back, "%s", err.msg);
    CHECK(same_message(m, back));
    CHECK(back->v == 1);
    check_meta(back);
    const tensor *t = msg_require_tensor(back, "t0", DT_F4, 2, &err);
    CHECK(t && t->shape[0] == 3 && t->shape[1] == 5 && t->count == 15);
    CHECK(((uintptr_t)t->data & 63) == 0);
    CHECK(msg_require_tensor(back, "t0", DT_F8, 2, &err) == NULL);
    CHECK_STR_CONTAINS(err.msg, "dtype is <f4, expected <f8");
    CHECK(msg_require_tensor(back, "nope", DT_F8, 2, &err) == NULL);
    CHECK_STR_CONTAINS(err.msg, "no tensor \"nope\"");
    CHECK(msg_read_one(path, "stats", &err) == NULL);
    CHECK_STR_CONTAINS(err.msg, "expected \"stats\"");
    msg_free(back);
    msg_free(m);
}

TEST(msg_stream_many_through_pipe)
{
    msg *m = sample_message();
    /* a big tensor, so the pipe fills and the reader sees partial reads */
    tensor *big = msg_add_tensor(m, "big", DT_F4, 1, (int64_t[]){300000});
    for (size_t k = 0; k < big->count; k++)
        ((float *)big->data)[k] = (float)k;
    int fds[2];
    CHECK(pipe(fds) == 0);
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        gd_err e;
        for (int k = 0; k < 5; k++) {
            value_set_int(&m->meta, "index", k);
            if (msg_write_fd(fds[1], m, &e) < 0)
                _exit(1);
        }
        _exit(0);
    }
    close(fds[1]);
    gd_err err;
    msg_reader *r = msg_reader_from_fd(fds[0], "pipe", &err);
    msg *got;
    int n = 0, rc;
    while ((rc = msg_reader_next(r, &got, &err)) == 1) {
        CHECK(value_int(&got->meta, "index", -1) == n);
        CHECK(same_message(m, got));
        n++;
        msg_free(got);
    }
    CHECK_MSG(rc == 0, "%s", err.msg);
    CHECK(n == 5 && msg_reader_count(r) == 5);
    msg_reader_close(r);
    close(fds[0]);
    msg_free(m);
}

TEST(msg_every_truncation_is_an_error)
{
    msg *m = sample_message();
    size_t len;
    unsigned char *buf = encode(m, 1, &len);
    CHECK(buf);
    for (size_t cut = 1; cut < len; cut++) {
        gd_err err;
        msg_reader *r = msg_reader_from_mem(buf, cut, "cut", &err);
        msg *got = NULL;
        int rc = msg_reader_next(r, &got, &err);
        msg_reader_close(r);
        CHECK_MSG(rc == -1 && got == NULL, "cut at %zu of %zu read as a message", cut, len);
        CHECK_STR_CONTAINS(err.msg, "cut: message 1: ");
    }
    /* Empty input is a clean end, not an error. */
    gd_err err;
    msg_reader *r = msg_reader_from_mem(buf, 0, "empty", &err);
    msg *got;
    CHECK(msg_reader_next(r, &got, &err) == 0);
    msg_reader_close(r);
    free(buf);
    msg_free(m);
}

TEST(msg_second_message_truncated_keeps_first)
{
    msg *m = sample_message();
    size_t len;
    unsigned char *buf = encode(m, 2, &len);
    CHECK(buf);
    gd_err err;
    msg_reader *r = msg_reader_from_mem(buf, len - 3, "two", &err);
    msg *got;
    CHECK(msg_reader_next(r, &got, &err) == 1);
    msg_free(got);
    CHECK(msg_reader_next(r, &got, &err) == -1);
    CHECK_STR_CONTAINS(err.msg, "two: message 2: truncated");
    msg_reader_close(r);
    free(buf);
    msg_free(m);
}

/* Hand-made msgpack: a message whose tensor claims more than it has. */
static size_t lying_message(unsigned char *b, uint32_t claimed)
{
    size_t n = 0;
    const char head[] = "\x84\xa1v\x01\xa4kind\xa5stats\xa4meta\x80\xa7tensors\x81\xa1x\x83"
                        "\xa5" "dtype\xa3<f4\xa5shape\x91\x02\xa4" "data\xc6";
    memcpy(b, head, sizeof head - 1);
    n = sizeof head - 1;
    b[n++] = (unsigned char)(claimed >> 24);
    b[n++] = (unsigned char)(claimed >> 16);
    b[n++] = (unsigned char)(claimed >> 8);
    b[n++] = (unsigned char)claimed;
    memset(b + n, 0, 8);
    return n + 8;
}

TEST(msg_lying_lengths_are_bounded)
{
    unsigned char b[256];
    gd_err err;
    msg *got;
    /* claims 4 GiB: refused from the header alone, nothing allocated */
    size_t n = lying_message(b, 0xffffffffu);
    msg_reader *r = msg_reader_from_mem(b, n, "liar", &err);
    CHECK(msg_reader_next(r, &got, &err) == -1);
    CHECK_STR_CONTAINS(err.msg, "exceeds the maximum message size");
    msg_reader_close(r);
    /* claims 100 bytes within the limit, has 8: truncated */
    n = lying_message(b, 100);
    r = msg_reader_from_mem(b, n, "short", &err);
    CHECK(msg_reader_next(r, &got, &err) == -1);
    CHECK_STR_CONTAINS(err.msg, "truncated");
    msg_reader_close(r);
    /* honest length, but the shape says [2] floats = 8 bytes */
    n = lying_message(b, 8);
    r = msg_reader_from_mem(b, n, "ok", &err);
    CHECK_MSG(msg_reader_next(r, &got, &err) == 1, "%s", err.msg);
    msg_free(got);
    msg_reader_close(r);
    n = lying_message(b, 4);
    r = msg_reader_from_mem(b, n - 4, "mismatch", &err);
    CHECK(msg_reader_next(r, &got, &err) == -1);
    CHECK_STR_CONTAINS(err.msg, "mismatch: message 1: tensor \"x\": data is 4 bytes, shape needs 8");
    msg_reader_close(r);
}

TEST(msg_huge_array_claim_refused)
{
    /* array32 claiming 2^32-1 elements in a 10-byte input */
    const unsigned char b[] = {0xdd, 0xff, 0xff, 0xff, 0xff, 0xc0, 0xc0, 0xc0, 0xc0, 0xc0};
    gd_err err;
    msg *got;
    msg_reader *r = msg_reader_from_mem(b, sizeof b, "arr", &err);
    msg_reader_set_max_bytes(r, 1 << 20);
    CHECK(msg_reader_next(r, &got, &err) == -1);
    CHECK_STR_CONTAINS(err.msg, "exceeds the maximum message size");
    msg_reader_close(r);
}

TEST(msg_max_bytes_enforced)
{
    msg *m = sample_message();
    size_t len;
    unsigned char *buf = encode(m, 1, &len);
    CHECK(buf);
    gd_err err;
    msg *got;
    msg_reader *r = msg_reader_from_mem(buf, len, "big", &err);
    msg_reader_set_max_bytes(r, len - 1);
    CHECK(msg_reader_next(r, &got, &err) == -1);
    CHECK_STR_CONTAINS(err.msg, "maximum message size");
    msg_reader_close(r);
    r = msg_reader_from_mem(buf, len, "fits", &err);
    msg_reader_set_max_bytes(r, len);
    CHECK(msg_reader_next(r, &got, &err) == 1);
    msg_free(got);
    msg_reader_close(r);
    free(buf);
    msg_free(m);
}

TEST(msg_deep_nesting_refused)
{
    unsigned char b[200];
    size_t n = 0;
    for (int k = 0; k < 100; k++)
        b[n++] = 0x91; /* array of one element, nested 100 deep */
    b[n++] = 0xc0;
    gd_err err;
    msg *got;
    msg_reader *r = msg_reader_from_mem(b, n, "deep", &err);
    CHECK(msg_reader_next(r, &got, &err) == -1);
    CHECK_STR_CONTAINS(err.msg, "nested deeper");
    msg_reader_close(r);
}

#define DECODE_FAILS(lit, what, err) decode_fails_with(lit, sizeof(lit) - 1, what, err)

static int decode_fails_with(const char *bytes, size_t n, const char *what, gd_err *err)
{
    msg *m = msg_decode(bytes, n, err);
    msg_free(m);
    return m == NULL && strstr(err->msg, what) != NULL;
}

TEST(msg_malformed_messages)
{
    gd_err err;
    CHECK(DECODE_FAILS("\x01", "not a message", &err));
    CHECK(DECODE_FAILS("\xc1", "malformed msgpack", &err));
    CHECK(DECODE_FAILS("\x80", "missing key \"v\"", &err));
    CHECK(DECODE_FAILS("\x82\xa1v\x01\xa4kind\xa1x", "missing key \"tensors\"", &err));
    CHECK(DECODE_FAILS("\x83\xa1v\x02\xa4kind\xa1x\xa7tensors\x80", "version 2 is newer",
                            &err));
    CHECK(DECODE_FAILS("\x83\xa1v\x01\xa4kind\x01\xa7tensors\x80", "\"kind\" is not a string",
                            &err));
    /* a tensor with an unknown dtype */
    const char bad_dtype[] = "\x83\xa1v\x01\xa4kind\xa1x\xa7tensors\x81\xa1t\x83\xa5" "dtype\xa3<u8"
                             "\xa5shape\x90\xa4" "data\xc4\x08" "01234567";
    CHECK(DECODE_FAILS(bad_dtype, "unknown dtype \"<u8\"", &err));
    /* trailing bytes after one message */
    const char ok[] = "\x83\xa1v\x01\xa4kind\xa1x\xa7tensors\x80";
    msg *m = msg_decode(ok, sizeof ok - 1, &err);
    CHECK_MSG(m, "%s", err.msg);
    CHECK(strcmp(m->kind, "x") == 0 && m->ntensors == 0 && m->meta.type == V_MAP);
    msg_free(m);
    CHECK(decode_fails_with(ok, sizeof ok, "trailing data", &err));
}

TEST(msg_atomic_file_abort_keeps_old)
{
    const char *path = test_path("keep.mpt");
    msg *m = sample_message();
    gd_err err;
    CHECK(msg_write_file(path, &m, 1, &err) == 0);
    struct stat before;
    CHECK(stat(path, &before) == 0);
    msg_file *f = msg_file_create(path, &err);
    CHECK(f);
    CHECK(msg_file_put(f, m, &err) == 0);
    CHECK(msg_file_put(f, m, &err) == 0);
    msg_file_abort(f);
    struct stat after;
    CHECK(stat(path, &after) == 0 && after.st_size == before.st_size);
    /* no temporary files left behind */
    char cmd[600];
    snprintf(cmd, sizeof cmd, "test $(ls -A '%s' | grep -c keep) -eq 1", test_tmpdir());
    CHECK(system(cmd) == 0);
    f = msg_file_create(path, &err);
    CHECK(msg_file_put(f, m, &err) == 0 && msg_file_put(f, m, &err) == 0);
    CHECK(msg_file_commit(f, &err) == 0);
    CHECK(stat(path, &after) == 0 && after.st_size > before.st_size);
    CHECK(msg_read_one(path, NULL, &err) == NULL);
    CHECK_STR_CONTAINS(err.msg, "holds more than one message");
    CHECK(msg_write_file("/nonexistent-dir/x.mpt", &m, 1, &err) == -1);
    CHECK_STR_CONTAINS(err.msg, "/nonexistent-dir/x.mpt");
    msg_free(m);
}

TEST(msg_max_bytes_from_environment)
{
    setenv("GEODINO_MAX_MESSAGE", "64M", 1);
    CHECK(msg_default_max_bytes() == (size_t)64 << 20);
    setenv("GEODINO_MAX_MESSAGE", "12345", 1);
    CHECK(msg_default_max_bytes() == 12345);
    setenv("GEODINO_MAX_MESSAGE", "lots", 1);
    CHECK(msg_default_max_bytes() == MSG_DEFAULT_MAX_BYTES);
    unsetenv("GEODINO_MAX_MESSAGE");
    CHECK(msg_default_max_bytes() == MSG_DEFAULT_MAX_BYTES);
}

TEST(msg_replace_tensor_and_meta)
{
    msg *m = msg_new("x");
    msg_add_tensor(m, "a", DT_F4, 1, (int64_t[]){4});
    msg_add_tensor(m, "b", DT_F4, 1, (int64_t[]){4});
    tensor *t = msg_add_tensor(m, "a", DT_I4, 1, (int64_t[]){2});
    CHECK(t && m->ntensors == 2 && msg_get_tensor(m, "a")->dtype == DT_I4);
    CHECK(msg_add_tensor(m, "neg", DT_F4, 1, (int64_t[]){-1}) == NULL);
    CHECK(msg_add_tensor(m, "huge", DT_F8, 2, (int64_t[]){INT64_MAX, INT64_MAX}) == NULL);
    CHECK(m->ntensors == 2);
    value_set_int(&m->meta, "k", 1);
    value_set_int(&m->meta, "k", 2);
    CHECK(m->meta.u.c.n == 1 && value_int(&m->meta, "k", 0) == 2);
    value copy;
    CHECK(value_copy(&copy, &m->meta) == 0);
    CHECK(value_int(&copy, "k", 0) == 2);
    value_free(&copy);
    msg_free(m);
}

/* Found by fuzz_msg: reading from memory must never move the caller's
 * bytes (the reader once compacted its buffer in place). */
TEST(msg_memory_reader_leaves_input_untouched)
{
    msg *m = sample_message();
    size_t len;
    unsigned char *buf = encode(m, 3, &len);
    CHECK(buf);
    unsigned char *copy = malloc(len);
    memcpy(copy, buf, len);
    gd_err err;
    msg_reader *r = msg_reader_from_mem(buf, len, "mem", &err);
    msg *got;
    int n = 0;
    while (msg_reader_next(r, &got, &err) == 1) {
        CHECK(same_message(m, got));
        msg_free(got);
        n++;
    }
    msg_reader_close(r);
    CHECK(n == 3);
    CHECK(memcmp(buf, copy, len) == 0);
    free(copy);
    free(buf);
    msg_free(m);
}
