/* cuda_runtime_api.h of the CPU emulator (tests/emu): the runtime's C API,
 * which the emulator's cuda_runtime.h declares for C and C++ alike. */
#include "cuda_runtime.h"
