#include "ema.h"

#include <stdlib.h>
#include <string.h>

#include "dino.h"

double ema_cosine_momentum(double base, long step, long total)
{
    return dino_cosine(base, 1.0, 1, (int)total, 0, 0, step);
}

static bool has_prefix(const char *s, const char *p) { return strncmp(s, p, strlen(p)) == 0; }

static size_t count_prefixed(const msg *m, const char *prefix)
{
    size_t n = 0;
    for (size_t i = 0; i < m->ntensors; i++)
        n += has_prefix(m->tensors[i].name, prefix);
    return n;
}

/* Checks that the two sides pair up exactly, before anything changes. */
static int check_pairs(const msg *teacher, const char *tp, const msg *student, const char *sp,
                       gd_err *err)
{
    size_t tl = strlen(tp), sl = strlen(sp), nt = 0;
    char name[512];
    for (size_t i = 0; i < teacher->ntensors; i++) {
        const tensor *t = &teacher->tensors[i];
        if (!has_prefix(t->name, tp))
            continue;
        nt++;
        snprintf(name, sizeof name, "%s%s", sp, t->name + tl);
        const tensor *s = msg_get_tensor(student, name);
        if (!s)
            return gd_errf(err, "tensor \"%s\" has no counterpart \"%s\" in the student", t->name,
                           name);
        if (t->dtype != DT_F4 || s->dtype != DT_F4)
            return gd_errf(err, "tensor \"%s\": dtype %s and %s, both must be <f4", t->name + tl,
                           dtype_name(t->dtype), dtype_name(s->dtype));
        bool same = t->ndim == s->ndim;
        for (int d = 0; same && d < t->ndim; d++)
            same = t->shape[d] == s->shape[d];
        if (!same) {
            char a[128] = "", b[128] = "";
            for (int d = 0; d < t->ndim; d++)
                snprintf(a + strlen(a), sizeof a - strlen(a), "%s%lld", d ? "," : "",
                         (long long)t->shape[d]);
            for (int d = 0; d < s->ndim; d++)
                snprintf(b + strlen(b), sizeof b - strlen(b), "%s%lld", d ? "," : "",
                         (long long)s->shape[d]);
            return gd_errf(err, "tensor \"%s\": shape [%s] in the teacher, [%s] in the student",
                           t->name + tl, a, b);
        }
    }
    if (nt == 0)
        return gd_errf(err, "the teacher holds no tensor named %s...", tp);
    if (count_prefixed(student, sp) != nt)
        for (size_t i = 0; i < student->ntensors; i++) {
            const tensor *s = &student->tensors[i];
            if (!has_prefix(s->name, sp))
                continue;
            snprintf(name, sizeof name, "%s%s", tp, s->name + sl);
            if (!msg_get_tensor(teacher, name))
                return gd_errf(err, "tensor \"%s\" has no counterpart \"%s\" in the teacher",
                               s->name, name);
        }
    return 0;
}

int ema_update_msgs(gd_backend *be, msg *teacher, const char *tprefix, const msg *student,
                    const char *sprefix, float m, size_t *count, gd_err *err)
{
    *count = 0;
    if (check_pairs(teacher, tprefix, student, sprefix, err))
        return -1;
    size_t tl = strlen(tprefix), maxn = 0;
    for (size_t i = 0; i < teacher->ntensors; i++)
        if (has_prefix(teacher->tensors[i].name, tprefix) && teacher->tensors[i].count > maxn)
            maxn = teacher->tensors[i].count;
    float *dt = be->alloc(be, maxn ? maxn : 1, err);
    float *ds = dt ? be->alloc(be, maxn ? maxn : 1, err) : NULL;
    int rc = dt && ds ? 0 : -1;
    char name[512];
    for (size_t i = 0; rc == 0 && i < teacher->ntensors; i++) {
        tensor *t = &teacher->tensors[i];
        if (!has_prefix(t->name, tprefix))
            continue;
        snprintf(name, sizeof name, "%s%s", sprefix, t->name + tl);
        const tensor *s = msg_get_tensor(student, name);
        if (be->upload(be, dt, t->data, t->count, err) || be->upload(be, ds, s->data, s->count, err))
            rc = -1;
        else {
            be->ema(be, dt, ds, m, t->count);
            if (be->download(be, t->data, dt, t->count, err) || be->sync(be, err))
                rc = -1;
            else
                (*count)++;
        }
    }
    be->release(be, dt);
    be->release(be, ds);
    return rc;
}
