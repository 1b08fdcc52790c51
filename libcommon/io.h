/* io.h: small, careful file I/O: buffered writes that report errors,
 * atomic file replacement, reading lists of paths. */
#ifndef GD_IO_H
#define GD_IO_H

#include <stddef.h>

#include "err.h"

/* A write buffer over a descriptor.  Large writes bypass the buffer.
 * The first error is kept in `error` (an errno) and later writes do
 * nothing, so callers check once at the end. */
typedef struct outbuf {
    int fd;
    int error;
    size_t len;
    char buf[1 << 16];
} outbuf;

void outbuf_init(outbuf *ob, int fd);
int outbuf_write(outbuf *ob, const void *data, size_t len);  /* 0 or -1 */
int outbuf_flush(outbuf *ob);

/* Writes all of data, retrying on EINTR and short writes.  0 or -1 (errno). */
int write_all(int fd, const void *data, size_t len);

/* A file written under a temporary name in the same directory, made
 * visible under its real name only by atomic_commit (fsync, rename,
 * fsync of the directory): a reader never sees half a file and a crash
 * never destroys the previous version.  A path that exists and is not a
 * regular file (/dev/null, /dev/stdout, a FIFO) is written in place:
 * renaming over it would replace the device with a file. */
typedef struct atomic_file {
    int fd;
    char *path;
    char *tmp;      /* NULL when writing in place */
} atomic_file;

int atomic_open(atomic_file *f, const char *path, gd_err *err);
int atomic_commit(atomic_file *f, gd_err *err);
void atomic_abort(atomic_file *f);

/* Reads a list of paths, one per line ('-' is standard input); blank
 * lines and lines starting with '#' are skipped, surrounding blanks
 * trimmed.  Appends to *items (growing it, *n counts); returns 0 or -1. */
int read_lines(const char *path, char ***items, size_t *n, gd_err *err);
void free_lines(char **items, size_t n);

#endif
