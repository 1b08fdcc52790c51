#include "value.h"

#include <stdlib.h>
#include <string.h>

void value_free(value *v)
{
    if (!v)
        return;
    if (v->type == V_STR) {
        free(v->u.s);
    } else if (v->type == V_ARRAY || v->type == V_MAP) {
        for (size_t k = 0; k < v->u.c.n; k++) {
            value_free(&v->u.c.items[k]);
            if (v->u.c.keys)
                free(v->u.c.keys[k]);
        }
        free(v->u.c.items);
        free(v->u.c.keys);
    }
    v->type = V_NIL;
}

value value_map(void) { return (value){.type = V_MAP}; }
value value_array(void) { return (value){.type = V_ARRAY}; }

static int container_reserve(value *v, size_t want)
{
    if (want <= v->u.c.cap)
        return 0;
    size_t cap = v->u.c.cap ? v->u.c.cap * 2 : 8;
    while (cap < want)
        cap *= 2;
    value *items = realloc(v->u.c.items, cap * sizeof *items);
    if (!items)
        return -1;
    v->u.c.items = items;
    if (v->type == V_MAP) {
        char **keys = realloc(v->u.c.keys, cap * sizeof *keys);
        if (!keys)
            return -1;
        v->u.c.keys = keys;
    }
    v->u.c.cap = cap;
    return 0;
}

int value_copy(value *dst, const value *src)
{
    *dst = (value){.type = src->type};
    switch (src->type) {
    case V_STR:
        dst->u.s = strdup(src->u.s);
        return dst->u.s ? 0 : -1;
    case V_ARRAY:
    case V_MAP:
        if (container_reserve(dst, src->u.c.n) < 0)
            goto fail;
        for (size_t k = 0; k < src->u.c.n; k++) {
            if (src->type == V_MAP) {
                dst->u.c.keys[k] = strdup(src->u.c.keys[k]);
                if (!dst->u.c.keys[k])
                    goto fail;
            }
            if (value_copy(&dst->u.c.items[k], &src->u.c.items[k]) < 0) {
                if (src->type == V_MAP)
                    free(dst->u.c.keys[k]);
                goto fail;
            }
            dst->u.c.n = k + 1;
        }
        return 0;
    default:
        dst->u = src->u;
        return 0;
    }
fail:
    value_free(dst);
    return -1;
}

value *value_push(value *array, value v)
{
    if (array->type != V_ARRAY || container_reserve(array, array->u.c.n + 1) < 0) {
        value_free(&v);
        return NULL;
    }
    array->u.c.items[array->u.c.n] = v;
    return &array->u.c.items[array->u.c.n++];
}

static value *map_find(const value *map, const char *key, size_t keylen)
{
    if (!map || map->type != V_MAP)
        return NULL;
    for (size_t k = 0; k < map->u.c.n; k++)
        if (strlen(map->u.c.keys[k]) == keylen && memcmp(map->u.c.keys[k], key, keylen) == 0)
            return &map->u.c.items[k];
    return NULL;
}

value *value_set(value *map, const char *key, value v)
{
    if (!map || map->type != V_MAP) {
        value_free(&v);
        return NULL;
    }
    value *old = map_find(map, key, strlen(key));
    if (old) {
        value_free(old);
        *old = v;
        return old;
    }
    char *k = strdup(key);
    if (!k || container_reserve(map, map->u.c.n + 1) < 0) {
        free(k);
        value_free(&v);
        return NULL;
    }
    map->u.c.keys[map->u.c.n] = k;
    map->u.c.items[map->u.c.n] = v;
    return &map->u.c.items[map->u.c.n++];
}

value *value_set_str(value *map, const char *key, const char *s)
{
    value v = {.type = V_STR, .u.s = strdup(s)};
    if (!v.u.s)
        return NULL;
    return value_set(map, key, v);
}

value *value_set_int(value *map, const char *key, int64_t i)
{
    return value_set(map, key, (value){.type = V_INT, .u.i = i});
}

value *value_set_float(value *map, const char *key, double f)
{
    return value_set(map, key, (value){.type = V_FLOAT, .u.f = f});
}

value *value_set_bool(value *map, const char *key, bool b)
{
    return value_set(map, key, (value){.type = V_BOOL, .u.b = b});
}

value *value_set_map(value *map, const char *key)
{
    return value_set(map, key, value_map());
}

value *value_set_strs(value *map, const char *key, const char *const *s, size_t n)
{
    value *arr = value_set(map, key, value_array());
    for (size_t k = 0; arr && k < n; k++) {
        value item = {.type = V_STR, .u.s = strdup(s[k])};
        if (!item.u.s || !value_push(arr, item))
            return NULL;
    }
    return arr;
}

value *value_set_floats(value *map, const char *key, const double *f, size_t n)
{
    value *arr = value_set(map, key, value_array());
    for (size_t k = 0; arr && k < n; k++)
        if (!value_push(arr, (value){.type = V_FLOAT, .u.f = f[k]}))
            return NULL;
    return arr;
}

const value *value_get(const value *map, const char *path)
{
    const value *v = map;
    while (v && *path) {
        const char *slash = strchr(path, '/');
        size_t len = slash ? (size_t)(slash - path) : strlen(path);
        v = map_find(v, path, len);
        path += len + (slash != NULL);
    }
    return v;
}

const char *value_str(const value *map, const char *path, const char *dflt)
{
    const value *v = value_get(map, path);
    return v && v->type == V_STR ? v->u.s : dflt;
}

int64_t value_int(const value *map, const char *path, int64_t dflt)
{
    const value *v = value_get(map, path);
    return v && v->type == V_INT ? v->u.i : dflt;
}

double value_float(const value *map, const char *path, double dflt)
{
    const value *v = value_get(map, path);
    if (v && v->type == V_FLOAT)
        return v->u.f;
    if (v && v->type == V_INT)
        return (double)v->u.i;
    return dflt;
}

bool value_bool(const value *map, const char *path, bool dflt)
{
    const value *v = value_get(map, path);
    return v && v->type == V_BOOL ? v->u.b : dflt;
}
