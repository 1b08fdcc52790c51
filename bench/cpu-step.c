/* bench/cpu-step.c: one DINO training step of vit_tiny/16 on the CPU
 * backend (2 global crops of 96 px + 4 local crops of 48 px, batch 8,
 * DINO's head with out_dim 65536), timed step by step, with the wall time
 * spent in GEMM and in attention (per-head GEMMs + softmax) from the
 * backend's own timers.  Built and run by bench/cpu-step.sh.
 *
 *   cpu-step [STEPS] [IN_CHANS] [OUT_DIM]     (defaults 5, 10, 65536) */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

#include "dino.h"
#include "rng.h"

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    int steps = argc > 1 ? atoi(argv[1]) : 5, chans = argc > 2 ? atoi(argv[2]) : 10;
    int out_dim = argc > 3 ? atoi(argv[3]) : 65536;
    if (steps < 1 || steps > 1000 || chans < 1 || out_dim < 1) {
        fprintf(stderr, "usage: cpu-step [STEPS] [IN_CHANS] [OUT_DIM]\n");
        return 2;
    }
    gd_err err;
    dino_model_cfg m;
    dino_model_preset(&m, "vit_tiny", 16, chans);
    m.out_dim = out_dim;
    dino_train_cfg tc;
    dino_train_defaults(&tc);
    enum { B = 8, NV = 6 };
    int res[NV] = {96, 96, 48, 48, 48, 48};
    tc.batch_size_total = B;
    gd_backend *be = gd_backend_cpu();
    dino_trainer *t = dino_trainer_new(be, &m, &tc, B, NV, res, 1, &err);
    if (!t || dino_trainer_init(t, 1, &err)) {
        fprintf(stderr, "cpu-step: %s\n", err.msg);
        return 1;
    }
    float *views[NV];
    rng r;
    rng_init(&r, 1, 2, 3, 4);
    for (int v = 0; v < NV; v++) {
        size_t n = (size_t)B * chans * res[v] * res[v];
        float *h = malloc(n * sizeof(float));
        views[v] = be->alloc(be, n, &err);
        if (!h || !views[v]) {
            fprintf(stderr, "cpu-step: out of memory\n");
            return 1;
        }
        for (size_t i = 0; i < n; i++)
            h[i] = (float)rng_normal(&r);
        if (be->upload(be, views[v], h, n, &err))
            return 1;
        free(h);
    }
    /* per step: wall time and the GEMM and attention time inside it */
    double *dt = calloc(steps, sizeof(double)), *sorted = calloc(steps, sizeof(double));
    double *gm = calloc(steps, sizeof(double)), *at = calloc(steps, sizeof(double));
    if (!dt || !sorted || !gm || !at)
        return 1;
    dino_step_stats st;
    /* one untimed step: first-touch page faults and OpenBLAS buffers */
    if (dino_trainer_step(t, views, 0, &st, &err)) {
        fprintf(stderr, "cpu-step: %s\n", err.msg);
        return 1;
    }
    int best = 0;
    for (int s = 0; s < steps; s++) {
        gd_cpu_timers_reset(be);
        double t0 = omp_get_wtime();
        if (dino_trainer_step(t, views, s + 1, &st, &err)) {
            fprintf(stderr, "cpu-step: %s\n", err.msg);
            return 1;
        }
        dt[s] = sorted[s] = omp_get_wtime() - t0;
        gd_cpu_timers tm = gd_cpu_timers_get(be);
        gm[s] = tm.gemm, at[s] = tm.attention;
        best = dt[s] < dt[best] ? s : best;
    }
    qsort(sorted, steps, sizeof *sorted, cmp_double);
    double total = 0, gemm = 0, att = 0;
    for (int s = 0; s < steps; s++)
        total += dt[s], gemm += gm[s], att += at[s];
    printf("vit_tiny/16 in_chans %d out_dim %d, 2x96 + 4x48 px, batch %d, %d threads, "
           "%zu parameters\n",
           chans, out_dim, B, omp_get_max_threads(), dino_trainer_nfloats(t));
    printf("step: median %.3f s, min %.3f s, over %d steps (loss %.4f)\n", sorted[steps / 2],
           sorted[0], steps, st.loss);
    printf("all steps: gemm %.1f%%, attention %.1f%% (GEMMs per head + softmax), other %.1f%%\n",
           100 * gemm / total, 100 * att / total, 100 * (total - gemm - att) / total);
    printf("fastest step: gemm %.1f%%, attention %.1f%%, other %.1f%%\n", 100 * gm[best] / dt[best],
           100 * at[best] / dt[best], 100 * (dt[best] - gm[best] - at[best]) / dt[best]);
    free(sorted), free(gm), free(at);
    for (int v = 0; v < NV; v++)
        be->release(be, views[v]);
    free(dt);
    dino_trainer_free(t);
    return 0;
}
