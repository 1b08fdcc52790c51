/* The PyTorch fixture on the CPU backend (the replay is parity.c). */
#include "parity.h"
#include "test.h"

TEST(parity_pytorch_three_dino_steps) { parity_replay(gd_backend_cpu()); }
