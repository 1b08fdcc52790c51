#include "halfprec.h"

#include <math.h>
#include <string.h>

/* ---- half precision ----------------------------------------------------- */

static uint32_t f32_bits(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static float bits_f32(uint32_t u)
{
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

uint16_t f32_to_f16(float x)
{
    uint32_t u = f32_bits(x);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) /* NaN: keep it quiet and keep the top payload bits */
        return sign | 0x7e00 | (uint16_t)((a >> 13) & 0x3ff);
    if (a >= 0x477ff000u) /* >= 65520 rounds to infinity */
        return sign | 0x7c00;
    if (a < 0x38800000u) {
        /* below 2^-14: a subnormal half, in units of 2^-24; the product is
         * exact and nearbyintf rounds half to even (1024 is the smallest
         * normal, which the bit pattern also says) */
        return sign | (uint16_t)nearbyintf(bits_f32(a) * 16777216.0f);
    }
    a += 0xfffu + ((a >> 13) & 1u); /* round to nearest even at bit 13 */
    return sign | (uint16_t)((a - 0x38000000u) >> 13);
}

float f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t e = (h >> 10) & 0x1f, m = h & 0x3ff;
    if (e == 0) {
        float v = ldexpf((float)m, -24);
        return sign ? -v : v;
    }
    if (e == 31)
        return bits_f32(sign | 0x7f800000u | (m << 13));
    return bits_f32(sign | ((e + 112) << 23) | (m << 13));
}

uint16_t f32_to_bf16(float x)
{
    uint32_t u = f32_bits(x);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x0040);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

float tensor_f32_at(const tensor *t, size_t i)
{
    switch (t->dtype) {
    case DT_F4: return ((const float *)t->data)[i];
    case DT_F8: return (float)((const double *)t->data)[i];
    case DT_F2: return f16_to_f32(((const uint16_t *)t->data)[i]);
    case DT_BF16: return bf16_to_f32(((const uint16_t *)t->data)[i]);
    default: return NAN;
    }
}

int tensor_range_to_f32(const tensor *t, size_t first, size_t n, float *out)
{
    if (t->dtype != DT_F4 && t->dtype != DT_F8 && t->dtype != DT_F2 && t->dtype != DT_BF16)
        return -1;
    if (first > t->count || n > t->count - first)
        return -1;
    if (t->dtype == DT_F4) {
        memcpy(out, (const float *)t->data + first, n * sizeof *out);
        return 0;
    }
    for (size_t i = 0; i < n; i++)
        out[i] = tensor_f32_at(t, first + i);
    return 0;
}

int tensor_to_f32(const tensor *t, float *out) { return tensor_range_to_f32(t, 0, t->count, out); }
