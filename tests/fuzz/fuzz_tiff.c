/* libFuzzer target: the TIFF reader on arbitrary bytes, with a small
 * sample limit so that absurd sizes are refused rather than allocated. */
#include <stddef.h>
#include <stdint.h>

#include "raster.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    raster r;
    gd_err err;
    raster_opts o = {.keep_native = true, .max_samples = 1 << 22};
    if (raster_read_mem(data, size, "fuzz", &o, &r, &err) == 0)
        raster_free(&r);
    return 0;
}
