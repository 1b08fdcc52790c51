/* msg.h: tensor messages, the mpt format of FORMAT.md (man 5 mpt).
 *
 * A message is {v, kind, meta, tensors}.  Files and streams hold any
 * number of them back to back.  Writing:
 *
 *     msg *m = msg_new("stats");
 *     tensor *t = msg_add_tensor(m, "mean", DT_F8, 1, (int64_t[]){6});
 *     ((double *)t->data)[0] = ...;
 *     value_set_str(&m->meta, "tool", "tif-stats");
 *     msg_write_file("stats.mpt", &m, 1, &err);     (atomic)
 *
 * Reading (files, pipes, stdin alike):
 *
 *     msg_reader *r = msg_reader_open("x.mpt", &err);
 *     while ((rc = msg_reader_next(r, &m, &err)) == 1) { ...; msg_free(m); }
 *     (rc == 0: clean end at a message boundary; rc < 0: err says what)
 *
 * Input is untrusted: every length is checked against the bytes that are
 * really there and against a maximum message size before anything is
 * allocated for it. */
#ifndef GD_MSG_H
#define GD_MSG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "err.h"
#include "value.h"

#define MSG_VERSION 1
#define MSG_MAX_DIMS 8
#define MSG_MAX_DEPTH 30                     /* nesting of maps/arrays */
#define MSG_DEFAULT_MAX_BYTES ((size_t)2 << 30) /* 2 GiB, as the Python snippet */

typedef enum { DT_F4, DT_F8, DT_F2, DT_BF16, DT_U1, DT_U2, DT_I2, DT_I4, DT_I8, DT_COUNT } dtype;

const char *dtype_name(dtype t);            /* "<f4", ..., "bf16" */
size_t dtype_size(dtype t);
int dtype_parse(const char *name, dtype *out); /* -1 when unknown */

typedef struct tensor {
    char *name;
    dtype dtype;
    int ndim;
    int64_t shape[MSG_MAX_DIMS];
    size_t count;            /* prod(shape) */
    size_t nbytes;           /* count * dtype_size */
    void *data;              /* 64-byte aligned, owned */
} tensor;

typedef struct msg {
    int v;
    char *kind;
    value meta;              /* a V_MAP */
    tensor *tensors;
    size_t ntensors, cap;
} msg;

msg *msg_new(const char *kind);
void msg_free(msg *m);

/* Adds a zero-filled tensor (replacing one of the same name); NULL when
 * out of memory or the shape is invalid.  The tensors live in one array
 * that grows: a pointer from an earlier call may move, so look tensors up
 * again (msg_get_tensor) after adding more. */
tensor *msg_add_tensor(msg *m, const char *name, dtype t, int ndim, const int64_t *shape);
/* Same, filled with a copy of data (nbytes = count * itemsize). */
tensor *msg_add_tensor_copy(msg *m, const char *name, dtype t, int ndim, const int64_t *shape,
                            const void *data);

const tensor *msg_get_tensor(const msg *m, const char *name);
/* The named tensor, checked: its dtype must be t and, when ndim >= 0, it
 * must have that many dimensions.  Otherwise NULL and err says which. */
const tensor *msg_require_tensor(const msg *m, const char *name, dtype t, int ndim, gd_err *err);

/* ---- writing ---------------------------------------------------------- */

/* Appends one message to an open descriptor (a pipe, stdout, a file). */
int msg_write_fd(int fd, const msg *m, gd_err *err);

/* Writes messages to a file atomically (temporary name in the same
 * directory, fsync, rename).  path "-" writes to stdout instead. */
int msg_write_file(const char *path, msg *const *msgs, size_t n, gd_err *err);

/* For writers that produce messages one at a time into a file: opened on
 * a temporary name, renamed over path only by msg_file_commit.  Closing
 * without commit (msg_file_abort) leaves the old file untouched. */
typedef struct msg_file msg_file;
msg_file *msg_file_create(const char *path, gd_err *err);
int msg_file_put(msg_file *f, const msg *m, gd_err *err);
int msg_file_commit(msg_file *f, gd_err *err);  /* frees f */
void msg_file_abort(msg_file *f);               /* frees f */

/* ---- reading ---------------------------------------------------------- */

typedef struct msg_reader msg_reader;

/* path "-" reads standard input.  The name appears in errors. */
msg_reader *msg_reader_open(const char *path, gd_err *err);
msg_reader *msg_reader_from_fd(int fd, const char *name, gd_err *err);
/* Reads from memory (no copy; buf must outlive the reader). */
msg_reader *msg_reader_from_mem(const void *buf, size_t len, const char *name, gd_err *err);
void msg_reader_set_max_bytes(msg_reader *r, size_t max_bytes);
/* 1: *out is the next message (free it with msg_free); 0: clean end of
 * input; -1: error, with "name: message N: what" in err. */
int msg_reader_next(msg_reader *r, msg **out, gd_err *err);
/* Number of messages returned so far. */
size_t msg_reader_count(const msg_reader *r);
void msg_reader_close(msg_reader *r);

/* Reads the one message a file must hold; an error if it holds none or
 * more than one, or if it is not of the given kind (kind NULL: any). */
msg *msg_read_one(const char *path, const char *kind, gd_err *err);

/* Decodes exactly one message from memory (the whole buffer); used by
 * the reader and the fuzzer. */
msg *msg_decode(const void *buf, size_t len, gd_err *err);

/* The maximum message size: GEODINO_MAX_MESSAGE (bytes, with an optional
 * K, M or G suffix) if set and valid, else MSG_DEFAULT_MAX_BYTES. */
size_t msg_default_max_bytes(void);

#endif
