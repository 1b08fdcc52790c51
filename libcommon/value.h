/* value.h: the free-form "meta" map of a message, as a small tree.
 *
 * A value is nil, bool, int, float, string or an array or map of values.
 * Maps keep insertion order (so output is stable) and have string keys.
 * The tree owns its strings.  Lookups take '/'-separated paths:
 * value_get(meta, "config/arch"). */
#ifndef GD_VALUE_H
#define GD_VALUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum { V_NIL, V_BOOL, V_INT, V_FLOAT, V_STR, V_ARRAY, V_MAP } value_type;

typedef struct value value;
struct value {
    value_type type;
    union {
        bool b;
        int64_t i;
        double f;
        char *s;                 /* V_STR, NUL-terminated */
        struct {                 /* V_ARRAY and V_MAP */
            value *items;
            char **keys;         /* V_MAP only */
            size_t n, cap;
        } c;
    } u;
};

void value_free(value *v);          /* frees the contents; v itself is not freed */
int value_copy(value *dst, const value *src);

value value_map(void);
value value_array(void);

/* Map building: each replaces an existing key.  Return a pointer to the
 * stored value, NULL when out of memory. */
value *value_set(value *map, const char *key, value v);   /* takes ownership of v */
value *value_set_str(value *map, const char *key, const char *s);
value *value_set_int(value *map, const char *key, int64_t i);
value *value_set_float(value *map, const char *key, double f);
value *value_set_bool(value *map, const char *key, bool b);
value *value_set_map(value *map, const char *key);      /* new empty map */
value *value_set_strs(value *map, const char *key, const char *const *s, size_t n);
value *value_set_floats(value *map, const char *key, const double *f, size_t n);
value *value_push(value *array, value v);                  /* takes ownership of v */

/* Lookup by '/'-separated path through nested maps; NULL when absent. */
const value *value_get(const value *map, const char *path);

/* Typed getters: the value at path, or `dflt` when absent or of
 * another type.  Ints read as floats where a float is asked for. */
const char *value_str(const value *map, const char *path, const char *dflt);
int64_t value_int(const value *map, const char *path, int64_t dflt);
double value_float(const value *map, const char *path, double dflt);
bool value_bool(const value *map, const char *path, bool dflt);

#endif
