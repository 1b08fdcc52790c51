/* bench/optim.c: the optimizer part of a DINO step, AdamW on every
 * trainable tensor of vit_small/16 with DINO's head (out_dim 65536) and the
 * teacher's EMA over all parameters, as separate ops (adamw per tensor, then
 * ema: two passes over the student, ~150 launches on a GPU) and as the
 * fused adamw_ema (one pass, one launch), alternating, in the same run.
 * Built and run by bench/optim.sh.
 *
 *   optim DEVICE ROUNDS      e.g. optim cpu 9, optim cuda 21
 *
 * Prints the median seconds of each and their ratio. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend.h"
#include "dino.h"
#include "timing.h"


enum { P, G, M, V, TEACHER, NBUF };

typedef struct bench {
    gd_backend *be;
    float *buf[NBUF];
    size_t total;
    gd_adam_tensor *tab;
    int nt;
} bench;

static void separate(bench *b, int step)
{
    gd_backend *be = b->be;
    for (int j = 0; j < b->nt; j++) {
        size_t o = b->tab[j].off;
        be->adamw(be, b->buf[P] + o, b->buf[G] + o, b->buf[M] + o, b->buf[V] + o, b->tab[j].n,
                  5e-4f, b->tab[j].wd, 0.9f, 0.999f, 1e-8f, step);
    }
    be->ema(be, b->buf[TEACHER], b->buf[P], 0.996f, b->total);
}

static void fused(bench *b, int step)
{
    for (int j = 0; j < b->nt; j++)
        b->tab[j].step = step;
    b->be->adamw_ema(b->be, b->buf[P], b->buf[G], b->buf[M], b->buf[V], b->buf[TEACHER], b->total,
                     b->tab, b->nt, 5e-4f, 0.9f, 0.999f, 1e-8f, 0.996f);
}

/* seconds of one call of f, after the backend has finished it */
static double timed(bench *b, void (*f)(bench *, int), int step, gd_err *err)
{
    double t0 = now();
    f(b, step);
    if (b->be->sync(b->be, err)) {
        fprintf(stderr, "optim: %s\n", err->msg);
        exit(1);
    }
    return now() - t0;
}

int main(int argc, char **argv)
{
    int rounds = argc == 3 ? atoi(argv[2]) : 0;
    if (rounds < 1 || rounds > 1000) {
        fprintf(stderr, "usage: optim DEVICE ROUNDS\n");
        return 2;
    }
    gd_err err;
    bench b = {.be = gd_backend_open(argv[1], "fp32", &err)};
    dino_model_cfg m;
    if (!b.be || dino_model_preset(&m, "vit_small", 16, 3)) {
        fprintf(stderr, "optim: %s\n", b.be ? "vit_small: no preset" : err.msg);
        return 1;
    }
    dino_train_cfg tc;
    dino_train_defaults(&tc);
    int res[2] = {32, 32};
    dino_trainer *t = dino_trainer_new(b.be, &m, &tc, 2, 2, res, 1, &err);
    if (!t) {
        fprintf(stderr, "optim: %s\n", err.msg);
        return 1;
    }
    int np;
    const dino_param *par = dino_trainer_params(t, &np);
    b.total = dino_trainer_nfloats(t);
    b.tab = calloc(np, sizeof *b.tab);
    if (!b.tab) {
        fprintf(stderr, "optim: out of memory\n");
        return 1;
    }
    for (int i = 0; i < np; i++)
        if (par[i].trainable)
            b.tab[b.nt++] = (gd_adam_tensor){.off = par[i].off, .n = par[i].n,
                                             .wd = par[i].decay ? 0.04f : 0.0f};
    static const float init[NBUF] = {0.01f, 1e-3f, 0.0f, 1e-6f, 0.01f};
    for (int k = 0; k < NBUF; k++) {
        if (!(b.buf[k] = b.be->alloc(b.be, b.total, &err))) {
            fprintf(stderr, "optim: %s\n", err.msg);
            return 1;
        }
        b.be->fill(b.be, b.buf[k], init[k], b.total);
    }
    double *ts = malloc(rounds * sizeof *ts), *tf = malloc(rounds * sizeof *tf);
    if (!ts || !tf)
        return fprintf(stderr, "optim: out of memory\n"), 1;
    timed(&b, separate, 1, &err); /* warm-up: first touch, launches */
    timed(&b, fused, 2, &err);
    for (int r = 0; r < rounds; r++) {
        ts[r] = timed(&b, separate, 3 + 2 * r, &err);
        tf[r] = timed(&b, fused, 4 + 2 * r, &err);
    }
    double s = median(ts, rounds), f = median(tf, rounds);
    printf("| %s | %zu | %d | %.4f | %.4f | %.2f |\n", b.be->name, b.total, b.nt, s, f, s / f);
    free(ts), free(tf), free(b.tab);
    for (int k = 0; k < NBUF; k++)
        b.be->release(b.be, b.buf[k]);
    dino_trainer_free(t);
    gd_backend_close(b.be);
    return 0;
}
