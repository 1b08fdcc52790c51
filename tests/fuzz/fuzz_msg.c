/* libFuzzer target: the message reader on arbitrary bytes.  Every input
 * must end in messages or a clean error; the reader's limit is small so
 * that size checks are exercised too. */
#include <stddef.h>
#include <stdint.h>

#include "msg.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    gd_err err;
    msg_reader *r = msg_reader_from_mem(data, size, "fuzz", &err);
    if (!r)
        return 0;
    msg_reader_set_max_bytes(r, 1 << 20);
    msg *m;
    while (msg_reader_next(r, &m, &err) == 1) {
        for (size_t k = 0; k < m->ntensors; k++) /* touch every byte */
            if (m->tensors[k].nbytes)
                ((volatile uint8_t *)m->tensors[k].data)[m->tensors[k].nbytes - 1]++;
        msg_free(m);
    }
    msg_reader_close(r);
    return 0;
}
