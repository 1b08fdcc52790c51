#include "cli.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io.h"

/* The program name: set once at start-up, read-only after (like
 * program_invocation_short_name). */
static const char *tool_name = "geodino";

void cli_init(const char *tool) { tool_name = tool; }
const char *cli_tool(void) { return tool_name; }

static void vsay(const char *fmt, va_list ap)
{
    fprintf(stderr, "%s: ", tool_name);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
}

void cli_fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsay(fmt, ap);
    va_end(ap);
    exit(EXIT_RUNTIME);
}

void cli_usage(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsay(fmt, ap);
    va_end(ap);
    fprintf(stderr, "Try '%s --help'.\n", tool_name);
    exit(EXIT_USAGE);
}

void cli_warn(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsay(fmt, ap);
    va_end(ap);
}

void cli_print_version(void) { printf("%s (geodino) %s\n", tool_name, GEODINO_VERSION); }

long cli_long(const char *opt, const char *s, long lo, long hi)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end)
        cli_usage("%s: '%s' is not an integer", opt, s);
    if (v < lo || v > hi)
        cli_usage("%s: %ld is out of range [%ld, %ld]", opt, v, lo, hi);
    return v;
}

double cli_double(const char *opt, const char *s, double lo, double hi)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v))
        cli_usage("%s: '%s' is not a number", opt, s);
    if (v < lo || v > hi)
        cli_usage("%s: %g is out of range [%g, %g]", opt, v, lo, hi);
    return v;
}

int cli_doubles(const char *opt, const char *s, double *out, int max, double lo, double hi)
{
    char *copy = strdup(s);
    if (!copy)
        cli_fail("out of memory");
    int n = 0;
    char *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (n == max)
            cli_usage("%s: more than %d values", opt, max);
        out[n++] = cli_double(opt, tok, lo, hi);
    }
    free(copy);
    if (n == 0)
        cli_usage("%s: no values in '%s'", opt, s);
    return n;
}

bool cli_progress_enabled(bool quiet, bool progress)
{
    if (progress)
        return true;
    if (quiet)
        return false;
    return isatty(STDERR_FILENO);
}

size_t cli_inputs(int argc, char **argv, int first, const char *list, char ***out)
{
    char **items = NULL;
    size_t n = 0;
    gd_err err;
    for (int k = first; k < argc; k++) {
        char **grown = realloc(items, (n + 1) * sizeof *items);
        if (!grown || !(grown[n] = strdup(argv[k])))
            cli_fail("out of memory");
        items = grown;
        n++;
    }
    if (list && read_lines(list, &items, &n, &err) < 0)
        cli_fail("%s", err.msg);
    if (first >= argc && !list && !isatty(STDIN_FILENO) && read_lines("-", &items, &n, &err) < 0)
        cli_fail("%s", err.msg);
    *out = items;
    return n;
}
