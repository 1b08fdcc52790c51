/* GPU checks: each CUDA op against the CPU on random inputs.  Without a
 * GPU every check says "skipped: no GPU" and none is counted as passed.
 * The last line is "N passed, N failed" (", N skipped"). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "cuda/device.h"

typedef int (*gpu_check)(char *why, size_t len);

static int check_saxpy(char *why, size_t len)
{
    enum { N = 1000003 };
    float *x = malloc(N * sizeof *x), *y = malloc(N * sizeof *y), *ref = malloc(N * sizeof *ref);
    int ok = x && y && ref;
    for (size_t i = 0; ok && i < N; i++) {
        x[i] = (float)((i * 2654435761u) % 1000) / 1000.0f;
        y[i] = ref[i] = (float)(i % 7);
        ref[i] = 2.5f * x[i] + ref[i];
    }
    gd_err err;
    if (ok && gd_cuda_saxpy(2.5f, x, y, N, &err) < 0) {
        snprintf(why, len, "%s", err.msg);
        ok = 0;
    }
    for (size_t i = 0; ok && i < N; i++)
        if (fabsf(y[i] - ref[i]) > 1e-6f * fabsf(ref[i]) + 1e-6f) {
            snprintf(why, len, "y[%zu] = %g, CPU gives %g", i, y[i], ref[i]);
            ok = 0;
        }
    free(x);
    free(y);
    free(ref);
    return ok;
}

static const struct {
    const char *name;
    gpu_check fn;
} checks[] = {
    {"cuda_saxpy_matches_cpu", check_saxpy},
};

int main(void)
{
    int n = sizeof checks / sizeof checks[0];
    gd_err err = {{0}};
    int devices = gd_cuda_device_count(&err);
    if (devices == 0) {
        for (int k = 0; k < n; k++)
            printf("%s ... skipped: no GPU (%s)\n", checks[k].name, err.msg);
        printf("0 passed, 0 failed, %d skipped\n", n);
        return 0;
    }
    char desc[256];
    if (gd_cuda_describe(0, desc, sizeof desc, &err) == 0)
        printf("device 0: %s\n", desc);
    int passed = 0, failed = 0;
    for (int k = 0; k < n; k++) {
        char why[512] = "";
        int ok = checks[k].fn(why, sizeof why);
        printf("%s ... %s%s\n", checks[k].name, ok ? "ok" : "FAIL: ", ok ? "" : why);
        ok ? passed++ : failed++;
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
