/* libFuzzer target: paste-aug's per-class means parser (--means FILE, the
 * JSON a training loop writes) on arbitrary bytes.  Every input must end
 * in finite parsed means or a clean error.  The class count comes from
 * the first byte so that short and long banks are both exercised. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "aelpaste.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int classes = 1 + data[0] % 64;
    double means[64];
    gd_err err;
    if (ael_parse_means_json((const char *)data + 1, size - 1, classes, means, &err) == 0)
        for (int k = 0; k < classes; k++)
            if (!isfinite(means[k]))
                abort();
    return 0;
}
