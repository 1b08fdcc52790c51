/* gpu.c: see gpu.h.
 *
 * Tolerances.  fp32 follows the issue (1e-5).  tf32 rounds both GEMM
 * operands to 10 mantissa bits: each rounding has a relative error of RMS
 * about 2^-11 / sqrt(3) * 0.72 = 2.0e-4 (the 0.72 from mantissas spread
 * over [1, 2)), so a product of random data is off by about sqrt(2) times
 * that, 2.9e-4, against the 3e-4: 1e-3 leaves room.  bf16 (8 bits)
 * gives 2.3e-3 by the same count; the 1e-2 is kept. */
#include "gpu.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/device.h"

#define NPREC 3
static const char *prec_names[NPREC] = {"fp32", "tf32", "bf16"};
static gd_backend *opened[NPREC];
static bool tried[NPREC];
static char why_not[NPREC][1024];

static void close_all(void)
{
    for (int i = 0; i < NPREC; i++)
        gd_backend_cuda_free(opened[i]);
}

static gd_backend *cuda_backend(const char *precision, const char **why)
{
    int i = 0;
    while (i < NPREC && strcmp(prec_names[i], precision))
        i++;
    if (i == NPREC) {
        *why = "unknown precision";
        return NULL;
    }
    if (!tried[i]) {
        static bool registered;
        gd_err err = {{0}};
        tried[i] = true;
        opened[i] = gd_backend_cuda(0, precision, &err);
        snprintf(why_not[i], sizeof why_not[i], "%s", err.msg);
        if (!registered) {
            atexit(close_all);
            registered = true;
        }
    }
    *why = why_not[i];
    return opened[i];
}

bool gpu_selftest(void)
{
    const char *e = getenv("GD_GPU_SELFTEST");
    return e && *e && strcmp(e, "0");
}

bool gpu_begin(gpu_test *t, const char *precision, unsigned seed)
{
    memset(t, 0, sizeof *t);
    gd_err err = {{0}};
    if (gpu_selftest()) { /* the harness checking itself: CPU against CPU */
        t->be[CPU] = t->be[GPU] = gd_backend_cpu();
        printf(" (self-test: CPU against CPU, not the GPU)");
        rng_init(&t->r, seed, 0x69b0, 0, 0);
        return true;
    }
    if (gd_cuda_device_count(&err) == 0) {
        char msg[1100];
        snprintf(msg, sizeof msg, "no GPU (%s)", err.msg);
        test_skip(msg);
        return false;
    }
    const char *why;
    t->be[CPU] = gd_backend_cpu();
    t->be[GPU] = cuda_backend(precision, &why);
    if (!t->be[GPU]) {
        test_fail(__FILE__, __LINE__, "the CUDA backend (%s) did not open: %s", precision, why);
        return false;
    }
    rng_init(&t->r, seed, 0x69b0, 0, 0);
    return true;
}

void gpu_end(gpu_test *t)
{
    for (int i = 0; i < t->npairs; i++) {
        pair *p = &t->pairs[i];
        free(p->h);
        for (int s = 0; s < 2; s++)
            t->be[s]->release(t->be[s], p->dev[s]);
    }
    t->npairs = 0;
}

pair *pair_from(gpu_test *t, const float *h, size_t n)
{
    if (t->npairs == MAX_PAIRS) {
        fprintf(stderr, "test-gpu: more than %d arrays in one check\n", MAX_PAIRS);
        exit(2);
    }
    pair *p = &t->pairs[t->npairs++];
    p->n = n;
    p->h = malloc((n ? n : 1) * sizeof(float));
    if (!p->h) {
        fprintf(stderr, "test-gpu: out of memory\n");
        exit(2);
    }
    if (n)
        memcpy(p->h, h, n * sizeof(float));
    for (int s = 0; s < 2; s++) {
        gd_err err;
        gd_backend *be = t->be[s];
        p->dev[s] = be->alloc(be, n, &err);
        if (!p->dev[s] || be->upload(be, p->dev[s], p->h, n, &err)) {
            fprintf(stderr, "test-gpu: %s: %s\n", be->name, err.msg);
            exit(2);
        }
    }
    return p;
}

static pair *pair_gen(gpu_test *t, size_t n, double sd, bool nan)
{
    float *h = malloc((n ? n : 1) * sizeof(float));
    if (!h) {
        fprintf(stderr, "test-gpu: out of memory\n");
        exit(2);
    }
    for (size_t i = 0; i < n; i++)
        h[i] = nan ? NAN : (float)(rng_normal(&t->r) * sd);
    pair *p = pair_from(t, h, n);
    free(h);
    return p;
}

pair *pair_in(gpu_test *t, size_t n, double sd) { return pair_gen(t, n, sd, false); }
pair *pair_out(gpu_test *t, size_t n) { return pair_gen(t, n, 0, true); }
pair *pair_acc(gpu_test *t, size_t n, double sd) { return pair_gen(t, n, sd, false); }

bool gpu_sync(gpu_test *t, const char *file, int line)
{
    for (int s = 0; s < 2; s++) {
        gd_err err;
        if (t->be[s]->sync(t->be[s], &err)) {
            test_fail(file, line, "%s: %s", t->be[s]->name, err.msg);
            return false;
        }
    }
    return true;
}

double rel_err(const float *gpu, const float *cpu, size_t n)
{
    double d = 0, s = 0;
    for (size_t i = 0; i < n; i++) {
        bool fc = isfinite(cpu[i]), fg = isfinite(gpu[i]);
        if (fc != fg)
            return INFINITY; /* unwritten (still NaN), or written where it should not be */
        if (!fc)
            continue;
        double e = (double)gpu[i] - cpu[i];
        d += e * e;
        s += (double)cpu[i] * cpu[i];
    }
    return s > 0 ? sqrt(d / s) : sqrt(d);
}

double pair_err(gpu_test *t, pair *p)
{
    size_t n = p->n ? p->n : 1;
    float *h[2] = {malloc(n * sizeof(float)), malloc(n * sizeof(float))};
    double e = INFINITY;
    gd_err err;
    if (h[0] && h[1] && t->be[CPU]->download(t->be[CPU], h[0], p->dev[CPU], p->n, &err) == 0 &&
        t->be[GPU]->download(t->be[GPU], h[1], p->dev[GPU], p->n, &err) == 0)
        e = rel_err(h[1], h[0], p->n);
    free(h[0]);
    free(h[1]);
    return e;
}

bool pair_cpu_finite(gpu_test *t, pair *p)
{
    float *h = malloc((p->n ? p->n : 1) * sizeof(float));
    gd_err err;
    bool ok = h && t->be[CPU]->download(t->be[CPU], h, p->dev[CPU], p->n, &err) == 0;
    for (size_t i = 0; ok && i < p->n; i++)
        ok = isfinite(h[i]);
    free(h);
    return ok;
}

void note_err(const char *label, double e)
{
    if (getenv("GD_VERBOSE"))
        printf(" [%s %.2g]", label, e);
}

bool pair_close(gpu_test *t, pair *p, double tol, const char *label, const char *file, int line)
{
    double e = pair_err(t, p);
    note_err(label, e);
    if (e <= tol)
        return true;
    test_fail(file, line, "%s: ||gpu - cpu|| / ||cpu|| = %.3g, tolerance %.3g%s", label, e, tol,
              isinf(e) ? " (an element is finite on one side only: unwritten?)" : "");
    return false;
}
