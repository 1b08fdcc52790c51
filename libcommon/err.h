/* err.h: error messages that say where and what.
 *
 * Every fallible function in libcommon takes a gd_err* and, on failure,
 * fills it with one line of text ("file: message 3: tensor \"x\": ...")
 * and returns -1 (or NULL).  Callers add context in front with
 * gd_err_prefix(); a tool prints "tool: " + the text.  No globals, so
 * threads each keep their own. */
#ifndef GD_ERR_H
#define GD_ERR_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct gd_err {
    char msg[1024];
} gd_err;

/* Sets the message (printf-style) and returns -1, so that
 * `return gd_errf(err, "...")` reads naturally.  err may be NULL. */
int gd_errf(gd_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Puts "prefix: " in front of the current message.  Returns -1. */
int gd_err_prefix(gd_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* "strerror(errno)" as gd_errf would print it, for system calls. */
int gd_errno(gd_err *err, const char *what);

#ifdef __cplusplus
}
#endif

#endif
