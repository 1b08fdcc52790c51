/* parity.h: the PyTorch fixture replay (parity.c), run on any backend by a
 * TEST of the unit runner (test.h): CPU in test-unit, CUDA in test-gpu. */
#ifndef GD_TEST_PARITY_H
#define GD_TEST_PARITY_H

#include "ops.h"

/* Three DINO steps of tests/reference/dino_tiny.mpt on be, checked against
 * PyTorch's losses, schedules and final weights (CHECK failures). */
void parity_replay(gd_backend *be);

#endif
