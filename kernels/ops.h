/* ops.h: the backend seam.  Every numerical operation the models need,
 * forward and backward, behind a table of function pointers chosen at run
 * time (gd_backend_cpu() now, a CUDA backend later).
 *
 * Buffers.  Every `float *` an op takes is a DEVICE pointer obtained from
 * be->alloc (or an offset into one: pointer arithmetic is allowed, reading
 * or writing through the pointer is not).  Model code in libcommon/ never
 * dereferences one; data crosses the seam only through be->upload and
 * be->download.  Host arrays, where an op takes any, are `const` host
 * memory and say so.  All shapes are explicit; tensors are row-major.
 *
 * Errors.  Compute ops cannot fail on valid shapes and return nothing (a
 * GPU backend runs them asynchronously); alloc, transfers and sync report
 * failures through gd_err and return -1.
 *
 * Gradient convention.  Backward ops ACCUMULATE (+=) into parameter
 * gradients (weights, biases, gains, position embeddings), so that crop
 * groups that share the weights simply add up.  Gradients with respect to
 * activations are OVERWRITTEN unless an op says otherwise (layernorm's
 * input gradient accumulates, because it always lands on a residual
 * stream that already carries a gradient).
 *
 * Precision.  Data are float32; sums over rows, norms and the loss are
 * accumulated in float64. */
#ifndef GD_OPS_H
#define GD_OPS_H

#include <stdbool.h>
#include <stddef.h>

#include "err.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct gd_backend gd_backend;

/* One tensor of an optimizer step (adamw_ema): where it lies in the flat
 * buffers, its weight decay (0 for biases and norms) and its AdamW step
 * count (from 1). */
typedef struct gd_adam_tensor {
    size_t off, n;
    float wd;
    int step;
} gd_adam_tensor;

struct gd_backend {
    const char *name; /* "cpu", "cuda" */
    void *ctx;        /* backend-private state (BLAS handles, streams, timers) */

    /* ---- memory ------------------------------------------------------ */
    float *(*alloc)(gd_backend *be, size_t n, gd_err *err); /* n floats, zeroed */
    void (*release)(gd_backend *be, float *p);              /* NULL is fine */
    /* n floats of host memory that upload and download move fastest:
     * page-locked on the GPU, so that a copy is a DMA that leaves the host
     * free at once (the memory must then stay untouched until sync).
     * NULL with the reason in err; free with host_free (NULL is fine). */
    float *(*host_alloc)(gd_backend *be, size_t n, gd_err *err);
    void (*host_free)(gd_backend *be, float *p);
    int (*upload)(gd_backend *be, float *dst, const float *host, size_t n, gd_err *err);
    int (*download)(gd_backend *be, float *host, const float *src, size_t n, gd_err *err);
    int (*sync)(gd_backend *be, gd_err *err); /* waits for queued work, reports its errors */
    void (*fill)(gd_backend *be, float *x, float v, size_t n);
    void (*copy)(gd_backend *be, float *dst, const float *src, size_t n);
    /* rows of n floats from src (row stride ss) to dst (row stride ds):
     * gathers the CLS tokens, and scatters their gradient back */
    void (*copy_rows)(gd_backend *be, float *dst, size_t ds, const float *src, size_t ss, int rows,
                      size_t n);

    /* ---- elementwise ------------------------------------------------- */
    void (*add)(gd_backend *be, float *y, const float *a, const float *b, size_t n); /* y = a + b */
    void (*axpy)(gd_backend *be, float *y, float alpha, const float *x, size_t n); /* y += alpha x */
    void (*scale)(gd_backend *be, float *x, float alpha, size_t n);
    /* y[r,:] = x[r,:] * s[r] for rows of length n: stochastic depth with a
     * host-drawn per-sample scale s (0 or 1/keep).  Its own adjoint. */
    void (*scale_rows)(gd_backend *be, float *y, const float *x, const float *s_host, int rows,
                       size_t n);

    /* ---- GEMM -------------------------------------------------------- */
    /* C = alpha op(A) op(B) + beta C, row-major; op(A) is M x K, op(B) K x N.
     * batch > 1 repeats it with strides sa, sb, sc (elements) between
     * consecutive matrices. */
    void (*gemm)(gd_backend *be, bool ta, bool tb, int M, int N, int K, float alpha,
                 const float *A, int lda, long sa, const float *B, int ldb, long sb, float beta,
                 float *C, int ldc, long sc, int batch);
    void (*bias_add)(gd_backend *be, float *y, const float *bias, int rows, int n);
    void (*bias_grad)(gd_backend *be, float *dbias, const float *dy, int rows, int n); /* += */

    /* ---- activations and normalisation -------------------------------- */
    /* exact GELU, x * Phi(x) */
    void (*gelu_fwd)(gd_backend *be, float *y, const float *x, size_t n);
    void (*gelu_bwd)(gd_backend *be, float *dx, const float *x, const float *dy, size_t n);
    /* y = (x - mean) * rstd * w + b per row; mean, rstd saved [rows] */
    void (*layernorm_fwd)(gd_backend *be, float *y, float *mean, float *rstd, const float *x,
                          const float *w, const float *b, int rows, int n, float eps);
    /* dx += ..., dw += ..., db += ... */
    void (*layernorm_bwd)(gd_backend *be, float *dx, float *dw, float *db, const float *dy,
                          const float *x, const float *w, const float *mean, const float *rstd,
                          int rows, int n);
    /* y = x / max(||x||_2, eps) per row (torch F.normalize); norms saved [rows] */
    void (*l2norm_fwd)(gd_backend *be, float *y, float *norms, const float *x, int rows, int n,
                       float eps);
    void (*l2norm_bwd)(gd_backend *be, float *dx, const float *dy, const float *y,
                       const float *norms, int rows, int n, float eps);
    /* Weight normalisation along dim 0: w[o,:] = g[o] v[o,:] / ||v[o,:]||.
     * norms saved [rows]; backward accumulates dg (when not NULL) and dv. */
    void (*weightnorm_fwd)(gd_backend *be, float *w, float *norms, const float *g,
                           const float *v, int rows, int n);
    void (*weightnorm_bwd)(gd_backend *be, float *dg, float *dv, const float *dw, const float *g,
                           const float *v, const float *norms, int rows, int n);
    /* y = softmax(x * inv_temp) per row */
    void (*softmax_fwd)(gd_backend *be, float *y, const float *x, float inv_temp, int rows, int n);

    /* ---- ViT pieces --------------------------------------------------- */
    /* Patch extraction (the stride = kernel convolution as a GEMM):
     * img [B, C, H, W] -> out [B, (H/p)(W/p), C p p], (c, ky, kx) order. */
    void (*patchify)(gd_backend *be, float *out, const float *img, int B, int C, int H, int W,
                     int p);
    /* x[b,0,:] = cls + pos[0]; x[b,1+i,:] = patches[b,i,:] + pos[1+i]. */
    void (*tokens_fwd)(gd_backend *be, float *x, const float *patches, const float *cls,
                       const float *pos, int B, int np, int D);
    /* dpatches = dx[:,1:] (overwrite, may be NULL); dcls += ; dpos += */
    void (*tokens_bwd)(gd_backend *be, float *dpatches, float *dcls, float *dpos, const float *dx,
                       int B, int np, int D);
    /* Position embeddings for another grid: out [1 + oh ow, D] from
     * pos [1 + g g, D]; row 0 (CLS) copied, the g x g grid resized
     * bicubically (A = -0.75, align_corners = False, clamped borders) with
     * source coordinate (dst + 0.5) / scale - 0.5, as torch's interpolate
     * with scale_factor (sh, sw). */
    void (*posinterp_fwd)(gd_backend *be, float *out, const float *pos, int g, int oh, int ow,
                          double sh, double sw, int D);
    void (*posinterp_bwd)(gd_backend *be, float *dpos, const float *dout, int g, int oh, int ow,
                          double sh, double sw, int D); /* dpos += */
    /* Multi-head self-attention on qkv [B, T, 3, H, hd] (timm's layout):
     * out [B, T, H hd], att [B, H, T, T] saved softmax probabilities. */
    void (*attention_fwd)(gd_backend *be, float *out, float *att, const float *qkv, int B, int T,
                          int H, int hd);
    /* dqkv overwritten; scratch [B, H, T, T] */
    void (*attention_bwd)(gd_backend *be, float *dqkv, float *scratch, const float *dout,
                          const float *qkv, const float *att, int B, int T, int H, int hd);

    /* ---- DINO loss ---------------------------------------------------- */
    /* q [2B, K] = softmax((t - center) / temp) over the global teacher views */
    void (*dino_teacher_probs)(gd_backend *be, float *q, const float *t, const float *center,
                               float temp, int rows, int K);
    /* Student out s [S B, K] (view-major), teacher probs q [G B, K]:
     * loss[0] = mean over pairs (i < G, v < S, v != i) of
     *           mean_b sum_k -q_i[b,k] log_softmax(s_v[b] / temp)[k];
     * ds (when not NULL) gets its gradient (overwrite). */
    void (*dino_loss)(gd_backend *be, float *loss, float *ds, const float *s, const float *q,
                      int G, int S, int B, int K, float student_temp);
    /* center = m center + (1 - m) mean_rows(t) */
    void (*center_update)(gd_backend *be, float *center, const float *t, int rows, int K, float m);

    /* ---- optimisation ------------------------------------------------- */
    /* sqrt(sum x^2) of each of n tensors (device offsets off[i], lengths
     * len[i], host arrays) into norms (host); DINO's clip_gradients then
     * scales tensor i by clip / (norm + 1e-6) when that is below 1 (clip
     * <= 0: no clipping). */
    int (*clip_per_tensor)(gd_backend *be, float *buf, const size_t *off, const size_t *len,
                           int n, float clip, double *norms, gd_err *err);
    /* torch.optim.AdamW, one tensor: p -= lr wd p; moments; bias-corrected
     * step (step counts from 1). */
    void (*adamw)(gd_backend *be, float *p, const float *g, float *m, float *v, size_t n,
                  float lr, float wd, float beta1, float beta2, float eps, int step);
    /* teacher = m teacher + (1 - m) student */
    void (*ema)(gd_backend *be, float *teacher, const float *student, float m, size_t n);
    /* A whole optimizer step over flat buffers of n floats in one pass (one
     * launch on the GPU): adamw on each of the nt tensors t[] (host array,
     * sorted by offset, not overlapping, inside n; an element of no listed
     * tensor, such as a frozen layer's, keeps its p, m and v), then
     * teacher = momentum teacher + (1 - momentum) p on all n.  The same
     * bits as adamw on each tensor followed by ema. */
    void (*adamw_ema)(gd_backend *be, float *p, const float *g, float *m, float *v,
                      float *teacher, size_t n, const gd_adam_tensor *t, int nt, float lr,
                      float beta1, float beta2, float eps, float momentum);
    /* out[0] = sum x (float64 accumulation) */
    void (*sum)(gd_backend *be, float *out, const float *x, size_t n);
    /* 1 when every element is finite */
    int (*all_finite)(gd_backend *be, const float *x, size_t n, int *finite, gd_err *err);

    /* ---- segmentation (mpa-adapt) ------------------------------------- */
    /* Bilinear resize of channels-last maps, in [B, h, w, C] -> out
     * [B, H, W, C], as torch's interpolate(mode="bilinear",
     * align_corners=False) with an output size: source coordinate
     * (dst + 0.5) in / out - 0.5, clamped at 0, the upper tap clamped to
     * the last row/column.  A planar image [C, H, W] is the case B = C,
     * C = 1.  The backward overwrites din with the adjoint. */
    void (*bilinear_fwd)(gd_backend *be, float *out, const float *in, int B, int h, int w, int H,
                         int W, int C);
    void (*bilinear_bwd)(gd_backend *be, float *din, const float *dout, int B, int h, int w,
                         int H, int W, int C);
    /* Softmax cross-entropy with an ignore index on logits [rows, K];
     * labels [rows] hold class ids as floats, and a label outside [0, K)
     * (the ignore index) does not count.  weights [K] or NULL (all 1).
     * loss[0] = sum_i w_yi (-log softmax(x_i)[y_i]) / sum_i w_yi (torch's
     * weighted mean; 0 when no row counts), loss[1] = sum_i w_yi.
     * dlogits (when not NULL) = scale * d loss[0] / d logits (overwrite;
     * zero on ignored rows). */
    void (*seg_ce)(gd_backend *be, float *loss, float *dlogits, const float *logits,
                   const float *labels, const float *weights, int rows, int K, float scale);
    /* Mutual Prototypical Adaptation's feature loss on features f
     * [rows, D] with class prototypes protos [K, D]: a row with label c in
     * [0, K) has the target p = protos[c], and
     *     l = alpha T^2 sum_d q_d (log q_d - log s_d)
     *         + (1 - alpha) (-log softmax(f)[argmax_d p_d]),
     * q = softmax(p / T), s = softmax(f / T) over the D dimensions
     * (torch's KLDivLoss(log_softmax(f/T), softmax(p/T)) summed over d).
     * loss[0] = mean of l over labelled rows (0 when none), loss[1] = their
     * count; df (when not NULL) = scale * d loss[0] / d f (overwrite;
     * zero on unlabelled rows).  No gradient reaches the prototypes. */
    void (*proto_loss)(gd_backend *be, float *loss, float *df, const float *f,
                       const float *protos, const float *labels, int rows, int D, int K, float T,
                       float alpha, float scale);
    /* Per-class sums of rows: sums[c, :] += sum of f rows labelled c,
     * counts[c] += their number; labels outside [0, K) are skipped. */
    void (*class_sums)(gd_backend *be, float *sums, float *counts, const float *f,
                       const float *labels, int rows, int D, int K);

    /* ---- deformable MLP (mpa-adapt --head dmlp) ------------------------ */
    /* Depthwise 3x3 convolution, stride 1, zero padding 1, on
     * channels-last maps x [B, H, W, C], weights w [C, 9] (ky * 3 + kx):
     *   y[b,i,j,c] = bias[c] + sum_ky,kx w[c, ky 3 + kx] x[b, i+ky-1, j+kx-1, c].
     * The backward overwrites dx and accumulates dw, dbias. */
    void (*dwconv3_fwd)(gd_backend *be, float *y, const float *x, const float *w,
                        const float *bias, int B, int H, int W, int C);
    void (*dwconv3_bwd)(gd_backend *be, float *dx, float *dw, float *dbias, const float *dy,
                        const float *x, const float *w, int B, int H, int W, int C);
    /* Modulated deformable 1x1 sampling (DCNv2 with a 1x1 kernel, one
     * offset group) of x [B, H, W, C], driven by raw per-position values
     * om [B, H, W, 3]: dy = clamp(om0, -max_off, max_off), dx likewise from
     * om1, m = 2 sigmoid(om2);
     *   y[b,i,j,:] = m * bilinear(x[b], i + dy, j + dx)
     * where a tap outside the map reads 0 (a position at or beyond one
     * pixel outside gives 0).  The backward overwrites dx and dom (the
     * gradient w.r.t. the raw values: 0 for a clamped offset). */
    void (*deform_sample_fwd)(gd_backend *be, float *y, const float *x, const float *om, int B,
                              int H, int W, int C, float max_off);
    void (*deform_sample_bwd)(gd_backend *be, float *dx, float *dom, const float *dy,
                              const float *x, const float *om, int B, int H, int W, int C,
                              float max_off);
};

/* The CPU reference backend (CBLAS + OpenMP).  A static object: no free. */
gd_backend *gd_backend_cpu(void);

/* Wall seconds the CPU backend spent in its gemm op and in its attention
 * ops (which are GEMMs per head plus a softmax) since the last reset; for
 * benchmarks.  Zeros for another backend. */
typedef struct gd_cpu_timers {
    double gemm, attention;
} gd_cpu_timers;
gd_cpu_timers gd_cpu_timers_get(const gd_backend *be);
void gd_cpu_timers_reset(gd_backend *be);

#ifdef __cplusplus
}
#endif

#endif
