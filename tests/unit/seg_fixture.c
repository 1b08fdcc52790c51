/* seg_fixture.c: see seg_fixture.h. */
#include "seg_fixture.h"

#include <math.h>
#include <stdio.h>

#include "ops.h"
#include "trainer.h"

float *tu_dev_of(const float *h, size_t n)
{
    gd_backend *be = gd_backend_cpu();
    float *d = be->alloc(be, n, NULL);
    if (d)
        be->upload(be, d, h, n, NULL);
    return d;
}

void tu_host_from(float *h, const float *d, size_t n)
{
    gd_backend *be = gd_backend_cpu();
    be->download(be, h, d, n, NULL);
}

void tu_fill_normal(rng *r, float *x, size_t n, double sd)
{
    for (size_t i = 0; i < n; i++)
        x[i] = (float)(rng_normal(r) * sd);
}

msg *tu_tiny_checkpoint(int depth)
{
    gd_backend *be = gd_backend_cpu();
    run_config c;
    run_config_defaults(&c);
    dino_model_preset(&c.model, "vit_tiny", 4, 2);
    snprintf(c.arch, sizeof c.arch, "vit_tiny");
    c.model.img_size = 8, c.model.depth = depth, c.model.embed_dim = 8, c.model.num_heads = 2;
    c.model.out_dim = 8, c.model.hidden_dim = 8, c.model.bottleneck_dim = 4;
    c.batch_size = 1, c.local_crops_number = 0, c.train.niter_per_epoch = 3;
    gd_err err;
    batch_shape s = {.B = 1, .G = 2, .C = 2, .H = 8};
    dino_trainer *t = run_trainer_new(be, &c, &s, &err);
    msg *m = NULL;
    if (t && dino_trainer_init(t, 5, &err) == 0)
        m = checkpoint_build(t, &c, 0, &err);
    dino_trainer_free(t);
    run_config_free(&c);
    return m;
}

double tu_seg_fd(seg_model *s, float *x, double h, const float *img, const uint8_t *lab, int n,
                 int S, const seg_loss_opts *o)
{
    gd_backend *be = gd_backend_cpu();
    float x0;
    double v[2];
    be->download(be, &x0, x, 1, NULL);
    for (int sg = 0; sg < 2; sg++) {
        float xh = (float)(x0 + (sg ? -h : h));
        seg_losses l;
        gd_err err;
        be->upload(be, x, &xh, 1, NULL);
        if (seg_batch_loss(s, img, lab, n, S, o, false, &l, &err))
            v[sg] = NAN;
        else
            v[sg] = l.ce + o->lambda_proto * l.proto;
    }
    be->upload(be, x, &x0, 1, NULL);
    return (v[0] - v[1]) / (2 * h);
}
