/* timing.h: the clock and the median of the C benchmarks in bench/. */
#ifndef GD_BENCH_TIMING_H
#define GD_BENCH_TIMING_H

#include <stdlib.h>
#include <time.h>

static inline double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static inline int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* sorts x */
static inline double median(double *x, int n)
{
    qsort(x, n, sizeof *x, cmp_double);
    return x[n / 2];
}

#endif
