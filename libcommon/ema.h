/* ema.h: the teacher's exponential moving average on named tensors, for
 * ema-update.  The arithmetic is the backend's `ema` op (kernels/ops.h),
 * the very op dino_trainer_step applies in process: one implementation.
 *
 *     teacher <- m teacher + (1 - m) student      for every parameter */
#ifndef GD_EMA_H
#define GD_EMA_H

#include <stddef.h>

#include "err.h"
#include "msg.h"
#include "ops.h"

/* DINO's momentum schedule (utils.cosine_scheduler from base to 1, no
 * warmup) at iteration step of total: the same dino_cosine the trainer uses. */
double ema_cosine_momentum(double base, long step, long total);

/* For every tensor of `teacher` named tprefix + path, takes the tensor
 * sprefix + path of `student` and updates the teacher's data in place
 * with the backend's ema op at momentum m.  Both sides must hold the same
 * set of paths with the same shapes, as <f4; otherwise -1 and err names
 * the first mismatch (in name order of the teacher).  *count gets the
 * number of tensors updated. */
int ema_update_msgs(gd_backend *be, msg *teacher, const char *tprefix, const msg *student,
                    const char *sprefix, float m, size_t *count, gd_err *err);

#endif
