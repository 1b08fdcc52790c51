#include "device.h"

#include <cstdio>

#include <cuda_runtime.h>

#define CUDA_TRY(call, what)                                                         \
    do {                                                                             \
        cudaError_t e_ = (call);                                                     \
        if (e_ != cudaSuccess) {                                                     \
            rc = gd_errf(err, "%s: %s", what, cudaGetErrorString(e_));               \
            goto out;                                                                \
        }                                                                            \
    } while (0)

extern "C" int gd_cuda_device_count(gd_err *err)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        gd_errf(err, "no CUDA device: %s", cudaGetErrorString(e));
        cudaGetLastError(); /* clear the sticky error for later calls */
        return 0;
    }
    if (n == 0)
        gd_errf(err, "no CUDA device");
    return n;
}

extern "C" int gd_cuda_describe(int index, char *buf, size_t len, gd_err *err)
{
    cudaDeviceProp p;
    cudaError_t e = cudaGetDeviceProperties(&p, index);
    if (e != cudaSuccess)
        return gd_errf(err, "cudaGetDeviceProperties(%d): %s", index, cudaGetErrorString(e));
    snprintf(buf, len, "%s, %.1f GiB, compute capability %d.%d, %d SMs", p.name,
             (double)p.totalGlobalMem / (1 << 30), p.major, p.minor, p.multiProcessorCount);
    return 0;
}

extern "C" int gd_cuda_has_bf16(int index)
{
    int major = 0;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, index) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return major >= 8;
}

__global__ static void saxpy_kernel(float a, const float *x, float *y, size_t n)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        y[i] = a * x[i] + y[i];
}

extern "C" int gd_cuda_saxpy(float a, const float *x, float *y, size_t n, gd_err *err)
{
    int rc = 0;
    float *dx = NULL, *dy = NULL;
    const unsigned threads = 256;
    if (n == 0)
        return 0;
    CUDA_TRY(cudaMalloc(&dx, n * sizeof *dx), "saxpy: cudaMalloc x");
    CUDA_TRY(cudaMalloc(&dy, n * sizeof *dy), "saxpy: cudaMalloc y");
    CUDA_TRY(cudaMemcpy(dx, x, n * sizeof *dx, cudaMemcpyHostToDevice), "saxpy: upload x");
    CUDA_TRY(cudaMemcpy(dy, y, n * sizeof *dy, cudaMemcpyHostToDevice), "saxpy: upload y");
    saxpy_kernel<<<(unsigned)((n + threads - 1) / threads), threads>>>(a, dx, dy, n);
    CUDA_TRY(cudaGetLastError(), "saxpy: launch");
    CUDA_TRY(cudaMemcpy(y, dy, n * sizeof *dy, cudaMemcpyDeviceToHost), "saxpy: download y");
out:
    if (dx && cudaFree(dx) != cudaSuccess && rc == 0)
        rc = gd_errf(err, "saxpy: cudaFree x");
    if (dy && cudaFree(dy) != cudaSuccess && rc == 0)
        rc = gd_errf(err, "saxpy: cudaFree y");
    return rc;
}
