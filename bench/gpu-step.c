/* bench/gpu-step.c: the DINO training step alone (views already in device
 * memory, no input pipe) on a backend chosen as dino-step chooses it, for
 * one recipe; prints images/s.  Built and run by bench/gpu-step.sh.
 *
 *   gpu-step DEVICE PRECISION ARCH PATCH CHANS GLOBAL LOCAL NLOCAL BATCH STEPS
 *   e.g. gpu-step cuda bf16 vit_small 16 3 224 96 10 64 20   (DINO's ImageNet recipe)
 *        gpu-step cuda bf16 vit_small 8 10 120 56 6 64 20    (the Sentinel-2 recipe)
 *
 * The model's native size (its position-embedding grid) is the global crop
 * size; DINO's head with out_dim 65536.  The first two steps warm up and
 * are not timed; each timed step ends with the trainer's own sync. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend.h"
#include "dino.h"
#include "rng.h"
#include "timing.h"

#define MAX_VIEWS 32
#define WARMUP 2

int main(int argc, char **argv)
{
    if (argc != 11) {
        fprintf(stderr, "usage: gpu-step DEVICE PRECISION ARCH PATCH CHANS GLOBAL LOCAL NLOCAL "
                        "BATCH STEPS\n");
        return 2;
    }
    const char *device = argv[1], *precision = argv[2], *arch = argv[3];
    int patch = atoi(argv[4]), chans = atoi(argv[5]), gres = atoi(argv[6]), lres = atoi(argv[7]);
    int nlocal = atoi(argv[8]), B = atoi(argv[9]), steps = atoi(argv[10]);
    int nv = 2 + nlocal;
    if (patch < 1 || chans < 1 || gres < patch || lres < patch || nlocal < 0 ||
        nv > MAX_VIEWS || B < 1 || steps < 1 || steps > 10000) {
        fprintf(stderr, "gpu-step: bad arguments\n");
        return 2;
    }
    gd_err err;
    gd_backend *be = gd_backend_open(device, precision, &err);
    dino_model_cfg m;
    if (!be || dino_model_preset(&m, arch, patch, chans)) {
        fprintf(stderr, "gpu-step: %s\n", be ? "unknown arch" : err.msg);
        return 1;
    }
    m.img_size = gres;
    dino_train_cfg tc;
    dino_train_defaults(&tc);
    tc.batch_size_total = B;
    tc.warmup_epochs = 0;
    int res[MAX_VIEWS];
    float *views[MAX_VIEWS];
    for (int v = 0; v < nv; v++)
        res[v] = v < 2 ? gres : lres;
    dino_trainer *t = dino_trainer_new(be, &m, &tc, B, nv, res, 1, &err);
    if (!t || dino_trainer_init(t, 1, &err)) {
        fprintf(stderr, "gpu-step: %s\n", err.msg);
        return 1;
    }
    rng r;
    rng_init(&r, 1, 2, 3, 4);
    for (int v = 0; v < nv; v++) {
        size_t n = (size_t)B * chans * res[v] * res[v];
        float *h = malloc(n * sizeof(float));
        if (!h || !(views[v] = be->alloc(be, n, &err))) {
            fprintf(stderr, "gpu-step: %s\n", h ? err.msg : "out of memory");
            return 1;
        }
        for (size_t i = 0; i < n; i++)
            h[i] = (float)rng_normal(&r);
        if (be->upload(be, views[v], h, n, &err)) {
            fprintf(stderr, "gpu-step: %s\n", err.msg);
            return 1;
        }
        free(h);
    }
    double *dt = malloc(steps * sizeof(double)), loss = 0;
    for (int it = 0; it < WARMUP + steps; it++) {
        dino_step_stats st;
        double t0 = now();
        if (!dt || dino_trainer_step(t, views, it, &st, &err)) {
            fprintf(stderr, "gpu-step: step %d: %s\n", it, dt ? err.msg : "out of memory");
            return 1;
        }
        if (it >= WARMUP)
            dt[it - WARMUP] = now() - t0;
        loss = st.loss;
    }
    qsort(dt, steps, sizeof *dt, cmp_double);
    double med = dt[steps / 2];
    printf("geodino %s %s %s/%d %d bands %dx%d+%dx%d B=%d: %.1f images/s (median step %.4f s, "
           "min %.4f s, %d steps, loss %.4f)\n",
           be->name, gd_backend_precision(be), arch, patch, chans, 2, gres, nlocal, lres, B,
           B / med, med, dt[0], steps, loss);
    free(dt);
    for (int v = 0; v < nv; v++)
        be->release(be, views[v]);
    dino_trainer_free(t);
    gd_backend_close(be);
    return 0;
}
