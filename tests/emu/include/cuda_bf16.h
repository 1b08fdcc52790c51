/* cuda_bf16.h of the CPU emulator (tests/emu): bfloat16 storage and the
 * two conversions the kernels use, rounding to nearest even as the GPU's
 * __float2bfloat16 does. */
#ifndef GD_EMU_CUDA_BF16_H
#define GD_EMU_CUDA_BF16_H

#include <cstdint>
#include <cstring>

struct __nv_bfloat16 {
    uint16_t x;
};

inline __nv_bfloat16 __float2bfloat16(float f)
{
    uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    __nv_bfloat16 h;
    if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN stays a (quiet) NaN */
        h.x = (uint16_t)((u >> 16) | 0x40);
    else
        h.x = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    return h;
}

inline float __bfloat162float(__nv_bfloat16 h)
{
    uint32_t u = (uint32_t)h.x << 16;
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

#endif
