#include "rng.h"

#include <math.h>

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void rng_init(rng *r, uint64_t seed, uint64_t a, uint64_t b, uint64_t c)
{
    /* Fold the stream name into one key, mixing after each part so that
     * (1, 2) and (2, 1) differ. */
    uint64_t key = seed;
    uint64_t parts[3] = {a, b, c};
    for (int k = 0; k < 3; k++) {
        uint64_t h = key ^ (parts[k] + 0x632be59bd9b4e019ull * (uint64_t)(k + 1));
        key = splitmix64(&h);
    }
    for (int k = 0; k < 4; k++)
        r->s[k] = splitmix64(&key);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t rng_next(rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double rng_uniform(rng *r) { return (double)(rng_next(r) >> 11) * 0x1.0p-53; }

double rng_range(rng *r, double lo, double hi) { return lo + (hi - lo) * rng_uniform(r); }

uint64_t rng_below(rng *r, uint64_t n)
{
    /* rejection of the short last bucket keeps every value equally likely */
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do
        x = rng_next(r);
    while (x >= limit);
    return x % n;
}

bool rng_bernoulli(rng *r, double p) { return rng_uniform(r) < p; }

double rng_normal(rng *r)
{
    /* Box-Muller; 1 - u keeps the logarithm finite */
    double u = 1.0 - rng_uniform(r), v = rng_uniform(r);
    return sqrt(-2.0 * log(u)) * cos(2.0 * M_PI * v);
}
