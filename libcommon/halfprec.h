/* halfprec.h: the 16-bit float formats of the message dtypes (<f2 and
 * bf16), and reading any float tensor as float32. */
#ifndef GD_HALFPREC_H
#define GD_HALFPREC_H

#include <stdint.h>

#include "msg.h"

/* IEEE half and bfloat16, round to nearest even; NaN stays NaN, overflow
 * gives infinity. */
uint16_t f32_to_f16(float x);
float f16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float x);
float bf16_to_f32(uint16_t h);

/* Element i of a float tensor (<f4, <f8, <f2, bf16) as float32. */
float tensor_f32_at(const tensor *t, size_t i);
/* All of it into out[t->count]; -1 when the dtype is not a float type. */
int tensor_to_f32(const tensor *t, float *out);
/* Elements first .. first + n - 1 into out[n]; -1 when the dtype is not a
 * float type or the range goes past the end. */
int tensor_range_to_f32(const tensor *t, size_t first, size_t n, float *out);

#endif
