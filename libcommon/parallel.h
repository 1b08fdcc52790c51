/* parallel.h: run fn(ctx, i) for i in [0, n) on a pool of threads.
 * Items are handed out in order from a shared counter; a worker that
 * returns nonzero stops the hand-out (items already running finish).
 * Results must be written per item and combined by the caller in item
 * order, which keeps output independent of the thread count. */
#ifndef GD_PARALLEL_H
#define GD_PARALLEL_H

#include <stddef.h>

typedef int (*parallel_fn)(void *ctx, size_t i, int thread);

/* threads <= 0: the number of online CPUs.  Returns 0, or the first
 * nonzero value a worker returned. */
int parallel_for(size_t n, int threads, parallel_fn fn, void *ctx);

int parallel_default_threads(void);

#endif
