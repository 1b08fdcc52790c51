/* cli.h: what every geodino program does the same way: its name in
 * messages, exit codes (0 ok, 1 runtime error, 2 usage error), --version,
 * checked number parsing, progress only on a terminal. */
#ifndef GD_CLI_H
#define GD_CLI_H

#include <stdbool.h>
#include <stddef.h>

#define GEODINO_VERSION "0.1.0"

enum { EXIT_RUNTIME = 1, EXIT_USAGE = 2 };

/* Records the program name for messages; call first in main. */
void cli_init(const char *tool);
const char *cli_tool(void);

/* "tool: what" on stderr.  cli_fail exits 1; cli_usage exits 2 and adds
 * "Try 'tool --help'." */
_Noreturn void cli_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
_Noreturn void cli_usage(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void cli_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void cli_print_version(void);

/* Strict parsing: the whole string, in range; otherwise a usage error
 * naming the option. */
long cli_long(const char *opt, const char *s, long lo, long hi);
double cli_double(const char *opt, const char *s, double lo, double hi);
/* A comma-separated list of doubles; returns how many (at most max). */
int cli_doubles(const char *opt, const char *s, double *out, int max, double lo, double hi);

/* Whether to show progress: --progress forces it on, --quiet off, else
 * only when stderr is a terminal. */
bool cli_progress_enabled(bool quiet, bool progress);

/* Collects input paths: positional arguments, lines of --list files, or
 * (when neither is given and stdin is not a terminal) lines of stdin.
 * Returns the count; exits with a message on error. */
size_t cli_inputs(int argc, char **argv, int first, const char *list, char ***out);

#endif
