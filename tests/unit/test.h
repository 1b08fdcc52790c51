/* test.h: a small unit-test runner.  TEST(name) { ... } registers a test;
 * CHECK* fail the current test and return from it.  The runner prints one
 * line per test and, last, "N passed, N failed" (", N skipped" when some
 * tests could not run).  Tests run from the repository root. */
#ifndef GD_TEST_H
#define GD_TEST_H

#include <math.h>
#include <stdio.h>
#include <string.h>

#ifdef __cplusplus
extern "C" { /* the emulator's self-test (tests/emu/test_emu.cu) is C++ */
#endif
typedef void (*test_fn)(void);
void test_register(const char *name, test_fn fn);
void test_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void test_skip(const char *why);
int test_failed(void);
/* A fresh temporary directory for this run (removed at exit). */
const char *test_tmpdir(void);
/* "tmpdir/name" in a static rotating buffer. */
const char *test_path(const char *name);
#ifdef __cplusplus
}
#endif

#define TEST(name)                                                                  \
    static void name(void);                                                         \
    __attribute__((constructor)) static void register_##name(void)                  \
    {                                                                               \
        test_register(#name, name);                                                 \
    }                                                                               \
    static void name(void)

#define CHECK(cond)                                                                 \
    do {                                                                            \
        if (!(cond)) {                                                              \
            test_fail(__FILE__, __LINE__, "%s", #cond);                             \
            return;                                                                 \
        }                                                                           \
    } while (0)

#define CHECK_MSG(cond, ...)                                                        \
    do {                                                                            \
        if (!(cond)) {                                                              \
            test_fail(__FILE__, __LINE__, __VA_ARGS__);                             \
            return;                                                                 \
        }                                                                           \
    } while (0)

/* |a - b| <= tol * max(1, |b|)  (relative, absolute near zero) */
#define CHECK_NEAR(a, b, tol)                                                       \
    do {                                                                            \
        double a_ = (double)(a), b_ = (double)(b);                                  \
        double s_ = fabs(b_) > 1 ? fabs(b_) : 1;                                    \
        if (!(fabs(a_ - b_) <= (tol) * s_)) {                                       \
            test_fail(__FILE__, __LINE__, "%s = %.17g, expected %s = %.17g (tol %g)", \
                      #a, a_, #b, b_, (double)(tol));                               \
            return;                                                                 \
        }                                                                           \
    } while (0)

#define CHECK_STR_CONTAINS(hay, needle)                                             \
    do {                                                                            \
        const char *h_ = (hay), *n_ = (needle);                                     \
        if (!h_ || !strstr(h_, n_)) {                                               \
            test_fail(__FILE__, __LINE__, "\"%s\" does not contain \"%s\"",         \
                      h_ ? h_ : "(null)", n_);                                      \
            return;                                                                 \
        }                                                                           \
    } while (0)

#endif
