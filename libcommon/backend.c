/* backend.c: see backend.h.  Everything CUDA is behind GD_HAVE_CUDA, so
 * that this file (and every tool) builds and runs where CUDA is absent. */
#include "backend.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef GD_HAVE_CUDA
#include "cuda/device.h"
#endif

bool gd_backend_cuda_built(void)
{
#ifdef GD_HAVE_CUDA
    return true;
#else
    return false;
#endif
}

/* "cuda" -> 0, "cuda:N" -> N; -1 when the name is neither */
static int cuda_index(const char *device)
{
    if (!strcmp(device, "cuda"))
        return 0;
    if (strncmp(device, "cuda:", 5) || !device[5])
        return -1;
    char *end;
    long n = strtol(device + 5, &end, 10);
    return *end || n < 0 || n > 1024 ? -1 : (int)n;
}

static bool known_precision(const char *p)
{
    return !strcmp(p, "auto") || !strcmp(p, "fp32") || !strcmp(p, "tf32") || !strcmp(p, "bf16");
}

int gd_backend_check_names(const char *device, const char *precision, gd_err *err)
{
    if (!known_precision(precision))
        return gd_errf(err, "--precision: '%s' is not auto, fp32, tf32 or bf16", precision);
    if (strcmp(device, "auto") && strcmp(device, "cpu") && cuda_index(device) < 0)
        return gd_errf(err, "--device: '%s' is not auto, cpu, cuda or cuda:N", device);
    if (!strcmp(device, "cpu") && strcmp(precision, "auto") && strcmp(precision, "fp32"))
        return gd_errf(err, "--precision %s: the CPU backend computes in fp32 only", precision);
    return 0;
}

const char *gd_backend_default_device(gd_err *err)
{
    const char *d = getenv("GEODINO_DEVICE");
    if (!d || !*d)
        return "auto";
    if (strcmp(d, "auto") && strcmp(d, "cpu") && cuda_index(d) < 0)
        return gd_errf(err, "GEODINO_DEVICE: '%s' is not auto, cpu, cuda or cuda:N", d), NULL;
    return d;
}

static gd_backend *open_cpu(const char *precision, gd_err *err)
{
    if (strcmp(precision, "auto") && strcmp(precision, "fp32"))
        return gd_errf(err, "no GPU here, and the CPU backend computes in fp32 only (--precision "
                            "%s)", precision),
               NULL;
    return gd_backend_cpu();
}

#ifdef GD_HAVE_CUDA
static gd_backend *open_cuda(int index, const char *precision, gd_err *err)
{
    if (!strcmp(precision, "auto"))
        precision = gd_cuda_has_bf16(index) ? "bf16" : "fp32";
    return gd_backend_cuda(index, precision, err);
}
#endif

gd_backend *gd_backend_open(const char *device, const char *precision, gd_err *err)
{
    if (gd_backend_check_names(device, precision, err))
        return NULL;
    if (!strcmp(device, "cpu"))
        return open_cpu(precision, err);
    int index = cuda_index(device);
#ifdef GD_HAVE_CUDA
    if (index >= 0)
        return open_cuda(index, precision, err);
    gd_err why;
    if (gd_cuda_device_count(&why) > 0)
        return open_cuda(0, precision, err);
    return open_cpu(precision, err);
#else
    if (index >= 0)
        return gd_errf(err, "this build has no CUDA backend (nvcc was not found when it was "
                            "built); use --device cpu"),
               NULL;
    return open_cpu(precision, err);
#endif
}

/* GPUs present; 0 in a build without CUDA */
static int cuda_count(void)
{
#ifdef GD_HAVE_CUDA
    gd_err why;
    int n = gd_cuda_device_count(&why);
    return n > 0 ? n : 0;
#else
    return 0;
#endif
}

const char *gd_backend_kind(const char *device)
{
    if (!strcmp(device, "cpu"))
        return "cpu";
    if (cuda_index(device) >= 0)
        return "cuda";
    return cuda_count() > 0 ? "cuda" : "cpu";
}

void gd_backend_rank_device(const char *device, int local_rank, char *out, size_t size)
{
    int n = cuda_count();
    if (n > 0 && (!strcmp(device, "auto") || !strcmp(device, "cuda")))
        snprintf(out, size, "cuda:%d", local_rank % n);
    else
        snprintf(out, size, "%s", device);
}

void gd_backend_close(gd_backend *be)
{
#ifdef GD_HAVE_CUDA
    if (be && be != gd_backend_cpu())
        gd_backend_cuda_free(be);
#else
    (void)be;
#endif
}

const char *gd_backend_precision(const gd_backend *be)
{
#ifdef GD_HAVE_CUDA
    if (be && !strcmp(be->name, "cuda"))
        return gd_backend_cuda_precision(be);
#endif
    (void)be;
    return "fp32";
}

void *gd_backend_stream(const gd_backend *be)
{
#ifdef GD_HAVE_CUDA
    if (be && !strcmp(be->name, "cuda"))
        return gd_backend_cuda_stream(be);
#endif
    (void)be;
    return NULL;
}
