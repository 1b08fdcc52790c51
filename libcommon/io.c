#include "io.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int write_all(int fd, const void *data, size_t len)
{
    const char *p = data;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

void outbuf_init(outbuf *ob, int fd)
{
    ob->fd = fd;
    ob->error = 0;
    ob->len = 0;
}

int outbuf_flush(outbuf *ob)
{
    if (!ob->error && ob->len && write_all(ob->fd, ob->buf, ob->len) < 0)
        ob->error = errno;
    ob->len = 0;
    return ob->error ? -1 : 0;
}

int outbuf_write(outbuf *ob, const void *data, size_t len)
{
    if (ob->error)
        return -1;
    if (len > sizeof ob->buf - ob->len) {
        if (outbuf_flush(ob) < 0)
            return -1;
        if (len >= sizeof ob->buf) {
            if (write_all(ob->fd, data, len) < 0)
                ob->error = errno;
            return ob->error ? -1 : 0;
        }
    }
    memcpy(ob->buf + ob->len, data, len);
    ob->len += len;
    return 0;
}

/* Devices, FIFOs and sockets are opened as they are, without truncation. */
static int open_in_place(atomic_file *f, const char *path, gd_err *err)
{
    f->tmp = NULL;
    f->path = strdup(path);
    if (!f->path)
        return gd_errf(err, "%s: out of memory", path);
    f->fd = open(path, O_WRONLY | O_CLOEXEC);
    if (f->fd < 0) {
        gd_errno(err, path);
        free(f->path);
        f->path = NULL;
        return -1;
    }
    return 0;
}

int atomic_open(atomic_file *f, const char *path, gd_err *err)
{
    struct stat st;
    if (stat(path, &st) == 0 && !S_ISREG(st.st_mode)) {
        if (S_ISDIR(st.st_mode))
            return gd_errf(err, "%s: is a directory", path);
        return open_in_place(f, path, err);
    }
    f->fd = -1;
    f->path = strdup(path);
    size_t n = strlen(path) + 16;
    f->tmp = malloc(n);
    if (!f->path || !f->tmp) {
        free(f->path);
        free(f->tmp);
        return gd_errf(err, "%s: out of memory", path);
    }
    /* The temporary name sits in the same directory, so rename is atomic. */
    char *copy = strdup(path);
    if (!copy) {
        atomic_abort(f);
        return gd_errf(err, "%s: out of memory", path);
    }
    char *slash = strrchr(copy, '/');
    if (slash)
        snprintf(f->tmp, n, "%.*s/.%s.XXXXXX", (int)(slash - copy), copy, slash + 1);
    else
        snprintf(f->tmp, n, ".%s.XXXXXX", copy);
    free(copy);
    f->fd = mkstemp(f->tmp);
    if (f->fd < 0) {
        gd_errno(err, path);
        free(f->path);
        free(f->tmp);
        f->path = f->tmp = NULL;
        return -1;
    }
    if (fchmod(f->fd, 0644) < 0) {
        gd_errno(err, path);
        atomic_abort(f);
        return -1;
    }
    return 0;
}

static int fsync_dir_of(const char *path)
{
    char *copy = strdup(path);
    if (!copy)
        return -1;
    int dfd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    free(copy);
    if (dfd < 0)
        return -1;
    int rc = fsync(dfd);
    close(dfd);
    return rc;
}

int atomic_commit(atomic_file *f, gd_err *err)
{
    int rc = 0;
    if (!f->tmp) { /* written in place: nothing to rename */
        if (close(f->fd) < 0)
            rc = gd_errno(err, f->path);
        f->fd = -1;
        free(f->path);
        f->path = NULL;
        return rc;
    }
    if (fsync(f->fd) < 0)
        rc = gd_errno(err, f->path);
    if (close(f->fd) < 0 && rc == 0)
        rc = gd_errno(err, f->path);
    f->fd = -1;
    if (rc == 0 && rename(f->tmp, f->path) < 0)
        rc = gd_errno(err, f->path);
    if (rc == 0 && fsync_dir_of(f->path) < 0)
        rc = gd_errno(err, f->path);
    if (rc < 0)
        unlink(f->tmp);
    free(f->path);
    free(f->tmp);
    f->path = f->tmp = NULL;
    return rc;
}

void atomic_abort(atomic_file *f)
{
    if (f->fd >= 0)
        close(f->fd);
    if (f->tmp)
        unlink(f->tmp);
    free(f->path);
    free(f->tmp);
    f->fd = -1;
    f->path = f->tmp = NULL;
}

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\n' || s[n - 1] == '\r'))
        s[--n] = 0;
    return s;
}

int read_lines(const char *path, char ***items, size_t *n, gd_err *err)
{
    int from_stdin = strcmp(path, "-") == 0;
    FILE *fp = from_stdin ? stdin : fopen(path, "r");
    if (!fp)
        return gd_errno(err, path);
    char *line = NULL;
    size_t cap = 0, lineno = 0;
    int rc = 0;
    errno = 0;
    while (getline(&line, &cap, fp) >= 0) {
        lineno++;
        char *s = trim(line);
        if (!*s || *s == '#')
            continue;
        char **grown = realloc(*items, (*n + 1) * sizeof **items);
        char *copy = strdup(s);
        if (!grown || !copy) {
            free(copy);
            if (grown)
                *items = grown;
            rc = gd_errf(err, "%s: line %zu: out of memory", path, lineno);
            break;
        }
        *items = grown;
        (*items)[(*n)++] = copy;
    }
    if (rc == 0 && ferror(fp))
        rc = gd_errno(err, path);
    free(line);
    if (!from_stdin)
        fclose(fp);
    return rc;
}

void free_lines(char **items, size_t n)
{
    for (size_t k = 0; k < n; k++)
        free(items[k]);
    free(items);
}
