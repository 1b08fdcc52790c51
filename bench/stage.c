/* bench/stage.c: the host side of feeding a batch to the trainer
 * (trainer.c's views_fill: each view converted to float32 and checked,
 * sample by sample, into the backend's staging memory, then uploaded once)
 * for the Sentinel-2 recipe (2 x 120 + 6 x 56 px, 10 bands, float32
 * messages as multicrop writes them).  Built and run by bench/stage.sh.
 *
 *   stage DEVICE BATCH ROUNDS
 *
 * Prints the median milliseconds per batch and the rate in GB/s of
 * float32 views delivered. */
#include <stdio.h>
#include <stdlib.h>

#include "backend.h"
#include "msg.h"
#include "rng.h"
#include "timing.h"
#include "trainer.h"

static tensor *random_views(msg *m, const char *name, int B, int nv, int res, rng *r)
{
    tensor *t = msg_add_tensor(m, name, DT_F4, 5, (int64_t[]){B, nv, 10, res, res});
    if (t)
        for (size_t i = 0; i < t->count; i++)
            ((float *)t->data)[i] = (float)rng_normal(r);
    return t;
}

int main(int argc, char **argv)
{
    int B = argc == 4 ? atoi(argv[2]) : 0, rounds = argc == 4 ? atoi(argv[3]) : 0;
    if (B < 1 || B > 1024 || rounds < 1 || rounds > 1000) {
        fprintf(stderr, "usage: stage DEVICE BATCH ROUNDS\n");
        return 2;
    }
    gd_err err;
    gd_backend *be = gd_backend_open(argv[1], "auto", &err);
    rng r;
    rng_init(&r, 1, 2, 3, 4);
    msg *m = msg_new("batch");
    if (!be || !m || !random_views(m, "global", B, 2, 120, &r) ||
        !random_views(m, "local", B, 6, 56, &r)) {
        fprintf(stderr, "stage: %s\n", be ? "out of memory" : err.msg);
        return 1;
    }
    batch_shape s;
    views v;
    double *t = malloc(rounds * sizeof *t);
    if (!t || batch_shape_of(m, &s, &err) || views_init(&v, be, &s, &err) ||
        views_fill(&v, m, &err)) {
        fprintf(stderr, "stage: %s\n", t ? err.msg : "out of memory");
        return 1;
    }
    for (int i = 0; i < rounds; i++) {
        double t0 = now();
        if (views_fill(&v, m, &err)) {
            fprintf(stderr, "stage: %s\n", err.msg);
            return 1;
        }
        t[i] = now() - t0;
    }
    double med = median(t, rounds);
    size_t bytes = (size_t)B * 10 * (2 * 120 * 120 + 6 * 56 * 56) * sizeof(float);
    printf("| %s | %d | %.2f | %.2f |\n", be->name, B, 1e3 * med, bytes / med / 1e9);
    free(t);
    views_free(&v);
    msg_free(m);
    gd_backend_close(be);
    return 0;
}
