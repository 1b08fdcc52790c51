/* rng.h: seeded, reproducible randomness with independent streams.
 *
 * A stream is named by (seed, a, b, c), for example (seed, epoch, sample,
 * view): every stream is fully determined by its name, so results do not
 * depend on the number of threads or the order of work.  The generator is
 * xoshiro256** seeded through splitmix64. */
#ifndef GD_RNG_H
#define GD_RNG_H

#include <stdbool.h>
#include <stdint.h>

typedef struct rng {
    uint64_t s[4];
} rng;

void rng_init(rng *r, uint64_t seed, uint64_t a, uint64_t b, uint64_t c);
uint64_t rng_next(rng *r);
double rng_uniform(rng *r);                       /* [0, 1), 53 bits */
double rng_range(rng *r, double lo, double hi);   /* [lo, hi) */
uint64_t rng_below(rng *r, uint64_t n);           /* [0, n), unbiased; n > 0 */
bool rng_bernoulli(rng *r, double p);
double rng_normal(rng *r);                        /* standard normal */

#endif
