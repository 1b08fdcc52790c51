#!/usr/bin/env bats
# dino-step init / train: checkpoints, exact resume, signals, bad input.
# Tiny models (depth 2, dim 32, out_dim 64) on 32/16 px crops of the real
# Landsat scene, so that every test runs in a second or two, under ASan too.

load helpers

TOOL=$ROOT/tests/cli/dino_tool.py

# 4 batches of 2 samples, 2 global 32 px + 2 local 16 px crops, 6 bands
batches() {
    "$BIN/tif-stats" "$DATA/L7_ETMs.tif" -o "$TMP/stats.mpt" > /dev/null
    for i in 1 2 3 4; do echo "$DATA/L7_ETMs.tif"; done > "$TMP/list.txt"
    "$BIN/multicrop" --stats "$TMP/stats.mpt" --list "$TMP/list.txt" --batch-size 2 --epochs 2 \
        --global-size 32 --local-size 16 --local-crops-number 2 --seed 1 --threads 1 -o "$TMP/b.mpt"
    $PY "$TOOL" split "$TMP/b.mpt" 2 "$TMP/b1.mpt" "$TMP/b2.mpt"
}

init() {
    "$BIN/dino-step" init --arch vit_tiny --depth 2 --embed-dim 32 --num-heads 2 --patch-size 8 \
        --img-size 32 --out-dim 64 --hidden-dim 64 --bottleneck-dim 32 --batch-size-per-gpu 2 \
        --local-crops-number 2 --iters-per-epoch 2 --epochs 10 --warmup-epochs 1 \
        --stats "$TMP/stats.mpt" "$@"
}

meta() { $PY "$TOOL" meta "$@"; }

# refused CKPT BATCHES MESSAGE [OPTION...]: train exits 1 saying MESSAGE and
# leaves CKPT as it was
refused() {
    local ck=$1 in=$2 want=$3
    shift 3
    cp "$ck" "$TMP/refused-before.mpt"
    run "$BIN/dino-step" train --ckpt "$ck" "$@" "$in"
    assert_failure 1
    assert_output --partial "$want"
    cmp "$ck" "$TMP/refused-before.mpt"
}

@test "help, version and usage errors" {
    run "$BIN/dino-step" --help
    assert_success
    assert_output --partial "init"
    run "$BIN/dino-step" --version
    assert_success
    assert_output --regexp "^dino-step \(geodino\) [0-9.]+$"
    run "$BIN/dino-step" init --help
    assert_success
    assert_output --partial "--iters-per-epoch"
    run "$BIN/dino-step" train --help
    assert_output --partial "--save-every"
    run "$BIN/dino-step" frobnicate
    assert_failure 2
    assert_output --partial "dino-step: unknown command 'frobnicate'"
    run "$BIN/dino-step" init -o "$TMP/c.mpt"
    assert_failure 2
    assert_output --partial "exactly one of --iters-per-epoch and --dataset-size"
    run "$BIN/dino-step" init --arch vit_huge --iters-per-epoch 1 -o "$TMP/c.mpt"
    assert_failure 2
    run "$BIN/dino-step" train
    assert_failure 2
    assert_output --partial "--ckpt"
    [ ! -e "$TMP/c.mpt" ]
}

@test "init: the whole configuration in meta, student = teacher, zero center and moments" {
    batches
    init --seed 7 -o "$TMP/c.mpt"
    run meta "$TMP/c.mpt" step
    assert_output "0"
    run meta "$TMP/c.mpt" config/arch
    assert_output '"vit_tiny"'
    run meta "$TMP/c.mpt" config/out_dim
    assert_output "64"
    run meta "$TMP/c.mpt" config/iters_per_epoch
    assert_output "2"
    run meta "$TMP/c.mpt" config/momentum_teacher
    assert_output "0.996"
    run meta "$TMP/c.mpt" config/in_chans
    assert_output "6"
    run meta "$TMP/c.mpt" config/seed
    assert_output "7"
    run meta "$TMP/c.mpt" config/global_crops_scale
    assert_output "[0.4, 1.0]"
    run meta "$TMP/c.mpt" stats/mean
    assert_output --partial "79.1477"
    run $PY "$TOOL" init-check "$TMP/c.mpt"
    assert_success
    assert_output "38"   # 4 + 12 per block * 2 + 2 + 6 + 2 head tensors
    # the same seed gives the same bytes, another seed other weights
    init --seed 7 -o "$TMP/d.mpt"
    cmp "$TMP/c.mpt" "$TMP/d.mpt"
    init --seed 8 -o "$TMP/e.mpt"
    run $PY "$TOOL" diff "$TMP/c.mpt" "$TMP/e.mpt" student/
    assert_line "student/backbone/cls_token"
    # an existing checkpoint is not replaced without --force
    run init -o "$TMP/c.mpt"
    assert_failure 1
    assert_output --partial "--force"
    init --seed 8 --force -o "$TMP/c.mpt"
    cmp "$TMP/c.mpt" "$TMP/e.mpt"
    # --dataset-size: iterations per epoch = size / (batch * world)
    run "$BIN/dino-step" init --dataset-size 101 --batch-size-per-gpu 5 --world-size 2 --print-config
    assert_success
    assert_line "iters_per_epoch: 10"
    assert_line "dataset_size: 101"
}

@test "train: one step per batch, a JSON log line per step, DINO's schedules" {
    batches
    init -o "$TMP/c.mpt"
    run "$BIN/dino-step" train --ckpt "$TMP/c.mpt" --log "$TMP/log.jsonl" --log-every 1 "$TMP/b.mpt"
    assert_success
    run meta "$TMP/c.mpt" step
    assert_output "4"
    run meta "$TMP/c.mpt" epoch
    assert_output "2"
    [ "$(wc -l < "$TMP/log.jsonl")" -eq 4 ]
    $PY - "$TMP/log.jsonl" <<'PY'
import json, math, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
assert [r["step"] for r in rows] == [1, 2, 3, 4]
assert [r["epoch"] for r in rows] == [0, 0, 1, 1]
for r in rows:
    for k in ("loss", "lr", "wd", "momentum", "teacher_temp", "teacher_entropy",
              "teacher_mean_entropy", "kl", "samples_per_s"):
        assert math.isfinite(r[k]), k
    assert set(r["grad_norm"]) == {"backbone", "head", "last_layer", "total"}
    assert 0 < r["teacher_entropy"] <= math.log(64) + 1e-9
    assert r["kl"] >= -1e-5
# warmup: lr 0 at iteration 0, then linear to 5e-4 * 2 / 256 over 1 epoch of 2 iterations
assert rows[0]["lr"] == 0 and abs(rows[1]["lr"] - 5e-4 * 2 / 256) < 1e-12
assert rows[0]["momentum"] == 0.996 and rows[3]["momentum"] > rows[0]["momentum"]
assert abs(rows[0]["wd"] - 0.04) < 1e-15 and rows[3]["wd"] > rows[0]["wd"]
assert rows[0]["last_layer_frozen"] and not rows[2]["last_layer_frozen"]
PY
    # grad norms are logged before clipping (DINO's clip_gradients return value)
    init --clip-grad 0.001 -o "$TMP/k.mpt"
    init --clip-grad 0 -o "$TMP/n.mpt"
    "$BIN/dino-step" train --ckpt "$TMP/k.mpt" --log "$TMP/k.jsonl" --log-every 1 --steps 2 "$TMP/b.mpt"
    "$BIN/dino-step" train --ckpt "$TMP/n.mpt" --log "$TMP/n.jsonl" --log-every 1 --steps 2 "$TMP/b.mpt"
    run $PY - "$TMP/k.jsonl" "$TMP/n.jsonl" <<'PY'
import json, sys
k, n = ([json.loads(l) for l in open(p)] for p in sys.argv[1:])
g = k[0]["grad_norm"]
# after clipping each of the 37 trainable tensors to 0.001 the total would be < 0.0061
assert g["total"] > 37 ** 0.5 * 0.001, g
assert abs(g["total"] ** 2 - g["backbone"] ** 2 - g["head"] ** 2 - g["last_layer"] ** 2) <= 1e-9 * g["total"] ** 2
# step 1 has the same gradient whether or not it is clipped (lr is 0 at step 0)
assert k[0]["grad_norm"] == n[0]["grad_norm"], (k[0]["grad_norm"], n[0]["grad_norm"])
print(k[0]["clipped"], n[0]["clipped"], n[1]["clipped"])
PY
    assert_output "37 0 0"
    # student and teacher moved apart from the initialisation, the center too
    init -o "$TMP/i.mpt"
    run $PY "$TOOL" diff "$TMP/i.mpt" "$TMP/c.mpt"
    assert_line "center"
    assert_line "teacher/backbone/blocks/0/attn/qkv/weight"
    assert_line "student/head/last_layer/weight_v"
    assert_line "adam_v/backbone/pos_embed"
    run meta "$TMP/c.mpt" adam_steps
    assert_output --partial "4, 4"
}

@test "resume: 4 steps == 2 steps + resume + 2 steps, bit for bit (drop path included)" {
    batches
    init -o "$TMP/a.mpt"
    cp "$TMP/a.mpt" "$TMP/r.mpt"
    cp "$TMP/a.mpt" "$TMP/s.mpt"
    run meta "$TMP/a.mpt" config/drop_path_rate
    assert_output --regexp "^0\.1"
    "$BIN/dino-step" train --ckpt "$TMP/a.mpt" < "$TMP/b.mpt"
    "$BIN/dino-step" train --ckpt "$TMP/r.mpt" "$TMP/b1.mpt"
    run meta "$TMP/r.mpt" step
    assert_output "2"
    "$BIN/dino-step" train --ckpt "$TMP/r.mpt" "$TMP/b2.mpt"
    cmp "$TMP/a.mpt" "$TMP/r.mpt"
    # --steps stops after 2 and leaves the rest of a stream unread
    "$BIN/dino-step" train --ckpt "$TMP/s.mpt" --steps 2 "$TMP/b.mpt"
    run meta "$TMP/s.mpt" step
    assert_output "2"
    "$BIN/dino-step" train --ckpt "$TMP/s.mpt" --steps 5 "$TMP/b2.mpt"
    cmp "$TMP/a.mpt" "$TMP/s.mpt"
}

@test "--save-every and --keep: periodic copies, the oldest removed" {
    batches
    init -o "$TMP/c.mpt"
    cp "$TMP/c.mpt" "$TMP/three.mpt"
    "$BIN/dino-step" train --ckpt "$TMP/c.mpt" --save-every 1 --keep 2 "$TMP/b.mpt"
    run ls "$TMP"
    refute_line "c-000001.mpt"
    refute_line "c-000002.mpt"
    assert_line "c-000003.mpt"
    assert_line "c-000004.mpt"
    cmp "$TMP/c.mpt" "$TMP/c-000004.mpt"
    "$BIN/dino-step" train --ckpt "$TMP/three.mpt" --steps 3 "$TMP/b.mpt"
    cmp "$TMP/three.mpt" "$TMP/c-000003.mpt"
    # no temporary files left behind
    run bash -c "ls -a '$TMP' | grep '^\.c\.mpt'"
    assert_failure
}

@test "SIGTERM during training: the step finishes, the checkpoint is saved, exit 0, resume is exact" {
    batches
    init -o "$TMP/a.mpt"
    cp "$TMP/a.mpt" "$TMP/r.mpt"
    "$BIN/dino-step" train --ckpt "$TMP/a.mpt" "$TMP/b.mpt"
    mkfifo "$TMP/fifo"
    "$BIN/dino-step" train --ckpt "$TMP/r.mpt" --save-every 0 --log "$TMP/log" --log-every 1 \
        "$TMP/fifo" 2> "$TMP/err" &
    pid=$!
    # the producer sends 2 batches and then stalls, as a slow pipeline would
    exec 5> "$TMP/fifo"
    cat "$TMP/b1.mpt" >&5
    for i in $(seq 200); do [ "$(wc -l < "$TMP/log" 2>/dev/null)" = 2 ] && break; sleep 0.1; done
    kill -TERM $pid
    rc=0; wait $pid || rc=$?
    exec 5>&-
    [ "$rc" -eq 0 ]
    run meta "$TMP/r.mpt" step
    assert_output "2"
    "$BIN/dino-step" train --ckpt "$TMP/r.mpt" "$TMP/b2.mpt"
    cmp "$TMP/a.mpt" "$TMP/r.mpt"
}

@test "SIGUSR1 saves and training goes on" {
    batches
    init -o "$TMP/r.mpt"
    mkfifo "$TMP/fifo"
    "$BIN/dino-step" train --ckpt "$TMP/r.mpt" --save-every 0 --log "$TMP/log" --log-every 1 \
        "$TMP/fifo" &
    pid=$!
    exec 5> "$TMP/fifo"
    cat "$TMP/b1.mpt" >&5
    for i in $(seq 200); do [ "$(wc -l < "$TMP/log" 2>/dev/null)" = 2 ] && break; sleep 0.1; done
    kill -USR1 $pid
    for i in $(seq 200); do [ "$(meta "$TMP/r.mpt" step)" = 2 ] && break; sleep 0.1; done
    run meta "$TMP/r.mpt" step
    assert_output "2"
    kill -0 $pid
    cat "$TMP/b2.mpt" >&5
    exec 5>&-
    wait $pid
    run meta "$TMP/r.mpt" step
    assert_output "4"
}

@test "kill -9 at any moment leaves a valid checkpoint" {
    batches
    init --out-dim 2048 -o "$TMP/c.mpt"
    for i in 1 2 3 4 5 6 7 8; do cat "$TMP/b.mpt"; done > "$TMP/many.mpt"
    for delay in 0.05 0.15 0.3 0.5; do
        "$BIN/dino-step" train --ckpt "$TMP/c.mpt" --save-every 1 "$TMP/many.mpt" &
        pid=$!
        sleep $delay
        kill -9 $pid 2>/dev/null || true
        wait $pid || true
        run $PY "$TOOL" count "$TMP/c.mpt"
        assert_output "1"
        run meta "$TMP/c.mpt" step
        assert_output --regexp "^[0-9]+$"
    done
    # and it still trains
    "$BIN/dino-step" train --ckpt "$TMP/c.mpt" --steps 1 "$TMP/b1.mpt"
}

@test "a truncated stream is an error; the steps done are saved, nothing else" {
    batches
    init -o "$TMP/c.mpt"
    cp "$TMP/c.mpt" "$TMP/two.mpt"
    "$BIN/dino-step" train --ckpt "$TMP/two.mpt" "$TMP/b1.mpt"
    size=$(stat -c %s "$TMP/b1.mpt")
    head -c $((size + 1000)) "$TMP/b.mpt" > "$TMP/trunc.mpt"
    run "$BIN/dino-step" train --ckpt "$TMP/c.mpt" --save-every 0 "$TMP/trunc.mpt"
    assert_failure 1
    assert_output --partial "dino-step: $TMP/trunc.mpt: message 3: truncated"
    cmp "$TMP/c.mpt" "$TMP/two.mpt"
    # garbage: nothing done, the checkpoint is untouched
    cp "$TMP/c.mpt" "$TMP/before.mpt"
    printf '\xc1garbage' > "$TMP/junk.mpt"
    run "$BIN/dino-step" train --ckpt "$TMP/c.mpt" "$TMP/junk.mpt"
    assert_failure 1
    assert_output --partial "malformed msgpack"
    cmp "$TMP/c.mpt" "$TMP/before.mpt"
}

@test "bad batches: NaN input, wrong batch size, a non-finite loss keeps the last checkpoint" {
    batches
    init -o "$TMP/c.mpt"
    cp "$TMP/c.mpt" "$TMP/before.mpt"
    $PY "$TOOL" badbatch "$TMP/b.mpt" "$TMP/nan.mpt" nan
    run "$BIN/dino-step" train --ckpt "$TMP/c.mpt" "$TMP/nan.mpt"
    assert_failure 1
    assert_output --partial "element 0 is not finite"
    $PY "$TOOL" badbatch "$TMP/b.mpt" "$TMP/bs.mpt" bsize
    refused "$TMP/c.mpt" "$TMP/bs.mpt" "batch of 3 samples, the run's batch_size_per_gpu is 2"
    cmp "$TMP/c.mpt" "$TMP/before.mpt"
    # crops far larger than the model's native size are refused before sizing the trainer
    init --patch-size 4 --img-size 4 -o "$TMP/small.mpt"
    refused "$TMP/small.mpt" "$TMP/b.mpt" \
        "batch: global crop size 32: more than 4 times the model's img_size 4"
    # two good steps saved, then a batch whose loss overflows: exit 1, the save stays.
    # On the CPU: whether inputs of 3e38 overflow the patch embedding depends on
    # the GEMM's summation order (the CUDA emulator's, like cuBLAS's, may not),
    # and what is tested here, keeping the save, is the trainer's, not the device's
    "$BIN/dino-step" train --ckpt "$TMP/c.mpt" --device cpu "$TMP/b1.mpt"
    cp "$TMP/c.mpt" "$TMP/good.mpt"
    $PY "$TOOL" badbatch "$TMP/b.mpt" "$TMP/huge.mpt" huge
    cat "$TMP/b2.mpt" "$TMP/huge.mpt" > "$TMP/then-huge.mpt"
    run "$BIN/dino-step" train --ckpt "$TMP/c.mpt" --device cpu --save-every 0 "$TMP/then-huge.mpt"
    assert_failure 1
    assert_output --regexp "loss is -?(nan|inf)"
    assert_output --partial "(step 2) is kept"
    cmp "$TMP/c.mpt" "$TMP/good.mpt"
}

@test "--collapse-check warns about a teacher with uniform output, not about a healthy one" {
    batches
    init -o "$TMP/c.mpt"
    run "$BIN/dino-step" train --ckpt "$TMP/c.mpt" --collapse-check --collapse-window 2 "$TMP/b.mpt"
    assert_success
    refute_output --partial "collapse"
    init -o "$TMP/d.mpt"
    $PY "$TOOL" collapse "$TMP/d.mpt" "$TMP/flat.mpt"
    run "$BIN/dino-step" train --ckpt "$TMP/flat.mpt" --collapse-check --collapse-window 2 "$TMP/b.mpt"
    assert_success
    assert_output --partial "dino-step: step 2: collapse? the teacher output has been uniform for 2 steps"
}

@test "--device/--precision: cpu trains; cuda trains or is refused clearly; bad names are usage errors" {
    batches
    init -o "$TMP/c.mpt"
    init -o "$TMP/g.mpt"
    run "$BIN/dino-step" train --ckpt "$TMP/g.mpt" --device cuda "$TMP/b1.mpt"
    if [ "$status" -eq 0 ]; then    # a GPU and a CUDA build: it trained
        run meta "$TMP/g.mpt" step
        assert_output "2"
    else
        assert_failure 1
        assert_output --regexp '^dino-step: --device cuda: (this build has no CUDA backend|no CUDA device)'
    fi
    run "$BIN/dino-step" train --ckpt "$TMP/c.mpt" --device tpu "$TMP/b1.mpt"
    assert_failure 2
    run "$BIN/dino-step" train --ckpt "$TMP/c.mpt" --precision fp16 "$TMP/b1.mpt"
    assert_failure 2
    assert_output --partial "'fp16' is not auto, fp32, tf32 or bf16"
    run "$BIN/dino-step" train --ckpt "$TMP/c.mpt" --device cpu --precision bf16 "$TMP/b1.mpt"
    assert_failure 2
    assert_output --partial "the CPU backend computes in fp32 only"
    "$BIN/dino-step" train --ckpt "$TMP/c.mpt" --device cpu --precision fp32 "$TMP/b1.mpt"
    run meta "$TMP/c.mpt" step
    assert_output "2"
}

@test "GEODINO_DEVICE sets --device's default; --device overrides it; a bad name is a usage error" {
    batches
    init -o "$TMP/c.mpt"
    cp "$TMP/c.mpt" "$TMP/e.mpt"
    GEODINO_DEVICE=cpu "$BIN/dino-step" train --ckpt "$TMP/e.mpt" "$TMP/b1.mpt"
    "$BIN/dino-step" train --ckpt "$TMP/c.mpt" --device cpu "$TMP/b1.mpt"
    cmp "$TMP/c.mpt" "$TMP/e.mpt"
    run env GEODINO_DEVICE=tpu "$BIN/dino-step" train --ckpt "$TMP/e.mpt" "$TMP/b1.mpt"
    assert_failure 2
    assert_output --partial "GEODINO_DEVICE: 'tpu' is not auto, cpu, cuda or cuda:N"
    run env GEODINO_DEVICE=tpu "$BIN/dino-step" embed --ckpt "$TMP/e.mpt" "$DATA/L7_ETMs.tif"
    assert_failure 2
    assert_output --partial "GEODINO_DEVICE: 'tpu'"
    GEODINO_DEVICE=tpu "$BIN/dino-step" train --ckpt "$TMP/e.mpt" --device cpu "$TMP/b1.mpt"
    run meta "$TMP/e.mpt" step
    assert_output "4"
}

@test "--restart: a new schedule from the weights; --no-resume refuses a trained checkpoint" {
    batches
    init -o "$TMP/c.mpt"
    "$BIN/dino-step" train --ckpt "$TMP/c.mpt" --steps 3 "$TMP/b.mpt"
    cp "$TMP/c.mpt" "$TMP/r.mpt"
    cp "$TMP/c.mpt" "$TMP/c0.mpt"
    # what --restart should equal: a fresh init holding c's weights
    init -o "$TMP/f.mpt"
    $PY "$TOOL" graft "$TMP/f.mpt" "$TMP/c.mpt" "$TMP/f.mpt" student/ teacher/
    run $PY "$TOOL" diff "$TMP/c.mpt" "$TMP/f.mpt" adam_m/
    assert_line "adam_m/backbone/cls_token"   # c's moments are not zero: the test can fail
    run "$BIN/dino-step" train --ckpt "$TMP/r.mpt" --restart --steps 2 --log "$TMP/r.jsonl" \
        --log-every 1 "$TMP/b.mpt"
    assert_success
    assert_output --partial "--restart: step 3 -> 0"
    "$BIN/dino-step" train --ckpt "$TMP/f.mpt" --steps 2 "$TMP/b.mpt"
    run meta "$TMP/r.mpt" step
    assert_output "2"
    run $PY "$TOOL" diff "$TMP/r.mpt" "$TMP/f.mpt"
    assert_output ""
    [ "$(meta "$TMP/r.mpt" adam_steps)" = "$(meta "$TMP/f.mpt" adam_steps)" ]
    # the schedules start afresh: iteration 0 is warmup's lr 0 and base momentum
    run $PY -c 'import json, sys; r = json.loads(open(sys.argv[1]).readline())
print(r["step"], r["lr"], r["momentum"])' "$TMP/r.jsonl"
    assert_output "1 0 0.996"
    # a restarted run then resumes exactly like any other
    cp "$TMP/r.mpt" "$TMP/r2.mpt"
    "$BIN/dino-step" train --ckpt "$TMP/r.mpt" --steps 1 "$TMP/b2.mpt"
    "$BIN/dino-step" train --ckpt "$TMP/r2.mpt" --resume --steps 1 "$TMP/b2.mpt"
    cmp "$TMP/r.mpt" "$TMP/r2.mpt"
    # --no-resume: a trained checkpoint is refused and left alone, a fresh one trains
    refused "$TMP/c.mpt" "$TMP/b.mpt" "has trained 3 steps and --no-resume was given" --no-resume
    cmp "$TMP/c.mpt" "$TMP/c0.mpt"
    init -o "$TMP/z.mpt"
    "$BIN/dino-step" train --ckpt "$TMP/z.mpt" --no-resume --steps 1 "$TMP/b.mpt"
    run meta "$TMP/z.mpt" step
    assert_output "1"
    run "$BIN/dino-step" train --ckpt "$TMP/c.mpt" --resume --restart "$TMP/b.mpt"
    assert_failure 2
    assert_output --partial "exclude each other"
}

@test "crop sizes: init --global-size/--local-size checked against every batch; else the first batch fixes them" {
    batches
    init --global-size 32 --local-size 16 -o "$TMP/c.mpt"
    run meta "$TMP/c.mpt" config/global_crops_size
    assert_output "32"
    run meta "$TMP/c.mpt" config/local_crops_size
    assert_output "16"
    run init --global-crops-size 32 --local-crops-size 16 --print-config
    assert_line "global_crops_size: 32"
    assert_line "local_crops_size: 16"
    "$BIN/dino-step" train --ckpt "$TMP/c.mpt" --steps 1 "$TMP/b.mpt"
    # a batch of other sizes than init's: a clear error naming the view, nothing trained
    init --global-size 48 --local-size 16 -o "$TMP/g.mpt"
    refused "$TMP/g.mpt" "$TMP/b.mpt" "global crops of 32 px, the run's global_crops_size is 48"
    init --global-size 32 --local-size 24 -o "$TMP/l.mpt"
    refused "$TMP/l.mpt" "$TMP/b.mpt" "local crops of 16 px, the run's local_crops_size is 24"
    # sizes the model cannot take are usage errors at init
    run init --global-size 30 -o "$TMP/x.mpt"
    assert_failure 2
    assert_output --partial "--global-size: global crop size 30 is not a multiple of the patch size 8"
    run init --local-size 16 --local-crops-number 0 -o "$TMP/x.mpt"
    assert_failure 2
    [ ! -e "$TMP/x.mpt" ]
    # without them (and in checkpoints made before they existed) the keys are
    # absent, the first batch fixes the sizes, and the saved run remembers them
    init -o "$TMP/o.mpt"
    run meta "$TMP/o.mpt" config
    refute_output --partial "crops_size"
    "$BIN/dino-step" train --ckpt "$TMP/o.mpt" --steps 2 "$TMP/b.mpt"
    run meta "$TMP/o.mpt" config/global_crops_size
    assert_output "32"
    run meta "$TMP/o.mpt" config/local_crops_size
    assert_output "16"
    "$BIN/multicrop" --stats "$TMP/stats.mpt" --list "$TMP/list.txt" --batch-size 2 \
        --global-size 48 --local-size 24 --local-crops-number 2 --seed 1 --threads 1 -o "$TMP/b48.mpt"
    refused "$TMP/o.mpt" "$TMP/b48.mpt" "global crops of 48 px, the run's global_crops_size is 32"
    # a malformed size in meta is refused
    $PY - "$TMP/o.mpt" "$TMP/bad.mpt" <<'PY'
import sys, msgpack
m = msgpack.unpackb(open(sys.argv[1], "rb").read())
m["meta"]["config"]["local_crops_size"] = 20
open(sys.argv[2], "wb").write(msgpack.packb(m))
PY
    run "$BIN/dino-step" train --ckpt "$TMP/bad.mpt" "$TMP/b.mpt"
    assert_failure 1
    assert_output --partial "meta config/local_crops_size: local crop size 20 is not a multiple of the patch size 8"
}
