#include "parallel.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

typedef struct {
    size_t n;
    atomic_size_t next;
    atomic_int failed;
    parallel_fn fn;
    void *ctx;
} pool;

typedef struct {
    pool *p;
    int id;
} worker;

static void *work(void *arg)
{
    worker *w = arg;
    pool *p = w->p;
    for (;;) {
        if (atomic_load(&p->failed))
            break;
        size_t i = atomic_fetch_add(&p->next, 1);
        if (i >= p->n)
            break;
        int rc = p->fn(p->ctx, i, w->id);
        if (rc) {
            int zero = 0;
            atomic_compare_exchange_strong(&p->failed, &zero, rc);
        }
    }
    return NULL;
}

int parallel_default_threads(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

int parallel_for(size_t n, int threads, parallel_fn fn, void *ctx)
{
    if (threads <= 0)
        threads = parallel_default_threads();
    if ((size_t)threads > n)
        threads = n ? (int)n : 1;
    pool p = {.n = n, .fn = fn, .ctx = ctx};
    atomic_init(&p.next, 0);
    atomic_init(&p.failed, 0);
    worker *ws = calloc((size_t)threads, sizeof *ws);
    pthread_t *tids = calloc((size_t)threads, sizeof *tids);
    int started = 0;
    if (ws && tids) {
        for (int t = 1; t < threads; t++) {
            ws[t] = (worker){.p = &p, .id = t};
            if (pthread_create(&tids[t], NULL, work, &ws[t]) != 0)
                break; /* fewer threads is still correct */
            started = t;
        }
    }
    worker self = {.p = &p, .id = 0};
    work(&self);
    for (int t = 1; t <= started; t++)
        pthread_join(tids[t], NULL);
    free(ws);
    free(tids);
    return atomic_load(&p.failed);
}
