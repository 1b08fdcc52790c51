#include "err.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int gd_errf(gd_err *err, const char *fmt, ...)
{
    if (!err)
        return -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    return -1;
}

int gd_err_prefix(gd_err *err, const char *fmt, ...)
{
    if (!err)
        return -1;
    char prefix[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    /* Shift the old text right and put the prefix in front (truncating
     * the end when the whole would not fit). */
    size_t plen = strlen(prefix), cap = sizeof err->msg - 1;
    if (plen + 2 > cap)
        plen = cap - 2;
    size_t olen = strnlen(err->msg, cap);
    if (plen + 2 + olen > cap)
        olen = cap - plen - 2;
    memmove(err->msg + plen + 2, err->msg, olen);
    memcpy(err->msg, prefix, plen);
    err->msg[plen] = ':';
    err->msg[plen + 1] = ' ';
    err->msg[plen + 2 + olen] = 0;
    return -1;
}

int gd_errno(gd_err *err, const char *what)
{
    return gd_errf(err, "%s: %s", what, strerror(errno));
}
