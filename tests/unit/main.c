/* The unit-test runner: `test-unit [substring]` runs every test whose name
 * contains the substring (all without one). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "test.h"

#define MAX_TESTS 1024

static struct {
    const char *name;
    test_fn fn;
} tests[MAX_TESTS];
static int ntests;
static int current_failed, current_skipped;
static char tmpdir[256];

void test_register(const char *name, test_fn fn)
{
    if (ntests == MAX_TESTS) {
        fprintf(stderr, "test-unit: more than %d tests\n", MAX_TESTS);
        exit(2);
    }
    tests[ntests].name = name;
    tests[ntests].fn = fn;
    ntests++;
}

void test_fail(const char *file, int line, const char *fmt, ...)
{
    if (!current_failed)
        printf("\n");
    current_failed = 1;
    printf("    %s:%d: ", file, line);
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
}

void test_skip(const char *why)
{
    current_skipped = 1;
    printf(" skipped: %s", why);
}

int test_failed(void) { return current_failed; }

const char *test_tmpdir(void) { return tmpdir; }

const char *test_path(const char *name)
{
    static char bufs[8][512];
    static int next;
    char *b = bufs[next++ % 8];
    snprintf(b, sizeof bufs[0], "%s/%s", tmpdir, name);
    return b;
}

static void remove_tmpdir(void)
{
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "test-unit: could not remove %s\n", tmpdir);
}

int main(int argc, char **argv)
{
    const char *filter = argc > 1 ? argv[1] : NULL;
    const char *base = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    snprintf(tmpdir, sizeof tmpdir, "%s/geodino-unit.XXXXXX", base);
    if (!mkdtemp(tmpdir)) {
        perror("test-unit: mkdtemp");
        return 2;
    }
    atexit(remove_tmpdir);
    int passed = 0, failed = 0, skipped = 0;
    for (int k = 0; k < ntests; k++) {
        if (filter && !strstr(tests[k].name, filter))
            continue;
        current_failed = current_skipped = 0;
        printf("%s ...", tests[k].name);
        fflush(stdout);
        tests[k].fn();
        if (current_failed) {
            printf("FAIL %s\n", tests[k].name);
            failed++;
        } else if (current_skipped) {
            printf("\n");
            skipped++;
        } else {
            printf(" ok\n");
            passed++;
        }
        fflush(stdout);
    }
    if (skipped)
        printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
    else
        printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
