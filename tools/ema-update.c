/* ema-update: the DINO teacher update on checkpoints,
 *     teacher <- m teacher + (1 - m) student
 * with the backend's ema op, the one dino-step applies in process. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "ema.h"
#include "msg.h"

static void usage(void)
{
    printf("Usage: ema-update --teacher T.mpt --student S.mpt MOMENTUM -o OUT.mpt\n"
           "       ema-update --ckpt CKPT.mpt MOMENTUM -o OUT.mpt\n"
           "DINO's teacher update, teacher <- m teacher + (1 - m) student, on every\n"
           "parameter: the teacher/<path> tensors of T (or CKPT) and the student/<path>\n"
           "tensors of S (or CKPT).  OUT is T (or CKPT) with its teacher replaced.\n\n"
           "  --teacher FILE          checkpoint holding the teacher\n"
           "  --student FILE          checkpoint holding the student\n"
           "  --ckpt FILE             one checkpoint holding both\n"
           "MOMENTUM, one of:\n"
           "  --momentum M            m itself\n"
           "  --step S --total N [--base B]   DINO's cosine schedule from B (0.996) to 1\n"
           "                          over N iterations, at iteration S (0-based)\n"
           "  -o, --output FILE       result, written atomically ('-': stdout)\n"
           "  --device auto|cpu|cuda  backend (auto: the CPU until CUDA is built)\n"
           "  -h, --help, --version\n");
}

int main(int argc, char **argv)
{
    cli_init("ema-update");
    enum { O_T = 256, O_S, O_C, O_M, O_STEP, O_TOTAL, O_BASE, O_DEV, O_VERSION };
    static const struct option longs[] = {
        {"teacher", 1, 0, O_T}, {"student", 1, 0, O_S}, {"ckpt", 1, 0, O_C},
        {"momentum", 1, 0, O_M}, {"step", 1, 0, O_STEP}, {"total", 1, 0, O_TOTAL},
        {"base", 1, 0, O_BASE}, {"output", 1, 0, 'o'}, {"device", 1, 0, O_DEV},
        {"help", 0, 0, 'h'}, {"version", 0, 0, O_VERSION}, {0, 0, 0, 0}};
    const char *tpath = NULL, *spath = NULL, *cpath = NULL, *out = NULL, *device = "auto";
    double m = -1, base = 0.996;
    long step = -1, total = -1;
    int o;
    while ((o = getopt_long(argc, argv, "o:h", longs, NULL)) != -1) {
        switch (o) {
        case O_T: tpath = optarg; break;
        case O_S: spath = optarg; break;
        case O_C: cpath = optarg; break;
        case O_M: m = cli_double("--momentum", optarg, 0, 1); break;
        case O_STEP: step = cli_long("--step", optarg, 0, 1L << 40); break;
        case O_TOTAL: total = cli_long("--total", optarg, 1, 1L << 30); break;
        case O_BASE: base = cli_double("--base", optarg, 0, 1); break;
        case 'o': out = optarg; break;
        case O_DEV: device = optarg; break;
        case 'h': usage(); return 0;
        case O_VERSION: cli_print_version(); return 0;
        default: cli_usage("unknown option");
        }
    }
    if (optind < argc)
        cli_usage("unexpected argument '%s'", argv[optind]);
    if (!out)
        cli_usage("-o OUT.mpt is required");
    if (cpath ? (tpath || spath) : !(tpath && spath))
        cli_usage("give --teacher and --student, or --ckpt");
    if ((m >= 0) == (step >= 0 || total >= 0))
        cli_usage("give --momentum, or --step and --total");
    if (m < 0 && (step < 0 || total < 0))
        cli_usage("--step and --total go together");
    if (strcmp(device, "cuda") == 0)
        cli_fail("--device cuda: the CUDA backend is not built yet; use --device cpu");
    if (strcmp(device, "cpu") && strcmp(device, "auto"))
        cli_usage("--device: '%s' is not auto, cpu or cuda", device);
    if (m < 0)
        m = ema_cosine_momentum(base, step, total);

    gd_err err;
    msg *t = msg_read_one(cpath ? cpath : tpath, NULL, &err);
    if (!t)
        cli_fail("%s", err.msg);
    msg *s = t;
    if (!cpath && !(s = msg_read_one(spath, NULL, &err)))
        cli_fail("%s", err.msg);
    size_t n;
    if (ema_update_msgs(gd_backend_cpu(), t, "teacher/", s, "student/", (float)m, &n, &err))
        cli_fail("%s", err.msg);
    value *e = value_set_map(&t->meta, "ema_update");
    if (!e || !value_set_float(e, "momentum", (double)(float)m) ||
        !value_set_int(e, "tensors", (int64_t)n) ||
        !value_set_str(e, "student", cpath ? cpath : spath))
        cli_fail("out of memory");
    if (msg_write_file(out, &t, 1, &err))
        cli_fail("%s", err.msg);
    if (s != t)
        msg_free(s);
    msg_free(t);
    return 0;
}
