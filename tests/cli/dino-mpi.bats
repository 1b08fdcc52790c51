#!/usr/bin/env bats
# dino-step train over MPI (CPU; NCCL with GEODINO_TEST_DEVICE=cuda, which
# make check runs on the CUDA emulator): 2 ranks equal one process on the
# concatenated batch, resume, the consistency guard, SIGTERM on one rank,
# a dead or stopped rank.  Tiny models as in dino-step.bats, 2 samples per
# rank.  Every mpirun runs under `timeout`, so that a hang fails the test.

load helpers

TOOL=$ROOT/tests/cli/dino_tool.py
DIST=$ROOT/tests/cli/dist_tool.py

needs_mpi() {
    command -v mpirun > /dev/null || skip "mpirun not found (scripts/deps.sh installs openmpi-bin)"
    [ -e "$BIN/../lib/geodino-mpi.so" ] || skip "no $BIN/../lib/geodino-mpi.so (make found no mpicc)"
}

# mpirun with 2 ranks; one OpenMP thread each on a shared box.  Under ASan,
# leak detection is off in the ranks only: OpenMPI unloads its components at
# MPI_Finalize and LSan then reports their leftovers with "<unknown module>"
# frames that no suppression can single out.  Address and UB checks stay on,
# and the single-process runs (here and in dino-step.bats) keep LSan.
mpi() {
    local t=$1; shift
    timeout "$t" mpirun --oversubscribe --allow-run-as-root -np 2 -x OMP_NUM_THREADS=1 \
        -x ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" "$@"
}

# 2 shards (multicrop --rank r --world 2) of 4 batches of 2 samples, and
# what one process sees: the shards' batches concatenated, rank 0 first
shards() {
    "$BIN/tif-stats" "$DATA/L7_ETMs.tif" -o "$TMP/stats.mpt" > /dev/null
    for i in 1 2 3 4 5 6 7 8; do echo "$DATA/L7_ETMs.tif"; done > "$TMP/list.txt"
    for r in 0 1; do
        "$BIN/multicrop" --stats "$TMP/stats.mpt" --list "$TMP/list.txt" --batch-size 2 \
            --epochs 2 --global-size 32 --local-size 16 --local-crops-number 2 --seed 1 \
            --threads 1 --rank $r --world 2 -o "$TMP/shard$r.mpt"
    done
    $PY "$DIST" concat "$TMP/both.mpt" "$TMP/shard0.mpt" "$TMP/shard1.mpt"
}

# drop path on (0.1 by default), so that per-sample randomness is tested
init() {
    "$BIN/dino-step" init --arch vit_tiny --depth 2 --embed-dim 32 --num-heads 2 --patch-size 8 \
        --img-size 32 --out-dim 64 --hidden-dim 64 --bottleneck-dim 32 --local-crops-number 2 \
        --iters-per-epoch 2 --epochs 10 --warmup-epochs 1 --stats "$TMP/stats.mpt" "$@"
}

descendants() {
    local p
    for p in $(pgrep -P "$1"); do
        echo "$p"
        descendants "$p"
    done
}

# the pid of one rank: a dino-step below the background job $1
rank_pid() {
    local p
    for _ in $(seq 100); do
        for p in $(descendants "$1"); do
            [ "$(ps -o comm= -p "$p")" = dino-step ] && { echo "$p"; return 0; }
        done
        sleep 0.1
    done
    return 1
}

# waits (at most 30 s) until FILE has N lines
wait_lines() {
    for _ in $(seq 300); do
        [ -e "$1" ] && [ "$(wc -l < "$1")" -ge "$2" ] && return 0
        sleep 0.1
    done
    return 1
}

# feed FIFO FILE [GATE FILE2]: writes FILE into FIFO, then FILE2 once GATE
# exists, and keeps the FIFO open until $TMP/done exists (so the reader
# waits for more input instead of seeing its end)
feed() {
    (
        cat "$2"
        if [ $# -ge 4 ]; then
            while [ ! -e "$3" ]; do sleep 0.1; done
            cat "$4"
        fi
        while [ ! -e "$TMP/done" ]; do sleep 0.1; done
    ) > "$1" 2> /dev/null 3>&- &
}

teardown() {
    touch "$TMP/done"
    sleep 0.3
    rm -rf "$TMP"
}

@test "mpi: a single process loads no MPI; --distributed without the plugin is a clear error" {
    shards
    init --batch-size-per-gpu 2 -o "$TMP/c.mpt"
    run ldd "$BIN/dino-step"
    refute_output --partial "libmpi"
    refute_output --partial "libnccl"
    # no launcher in the environment: the plugin is never opened
    GEODINO_COMM_PLUGIN=/nonexistent/geodino-mpi.so run "$BIN/dino-step" train --ckpt "$TMP/c.mpt" \
        --steps 1 "$TMP/shard0.mpt"
    assert_success
    GEODINO_COMM_PLUGIN=/nonexistent/geodino-mpi.so run "$BIN/dino-step" train --ckpt "$TMP/c.mpt" \
        --distributed yes --steps 1 "$TMP/shard0.mpt"
    assert_failure 1
    assert_output --partial "distributed training needs the MPI"  # MPI+NCCL with --device cuda
    run "$BIN/dino-step" train --ckpt "$TMP/c.mpt" --distributed maybe "$TMP/shard0.mpt"
    assert_failure 2
    run "$BIN/dino-step" train --ckpt "$TMP/c.mpt" "$TMP/shard%x.mpt"
    assert_failure 2
    assert_output --partial "followed by r"
    # %r is the rank, 0 for one process
    run "$BIN/dino-step" train --ckpt "$TMP/c.mpt" --steps 1 "$TMP/shard%r.mpt"
    assert_success
    run $PY "$TOOL" meta "$TMP/c.mpt" step
    assert_output "2"
}

@test "mpi: 2 ranks on 2 shards equal one process on both shards' samples as one batch" {
    needs_mpi
    shards
    init --batch-size-per-gpu 2 --world-size 2 -o "$TMP/two.mpt"
    init --batch-size-per-gpu 4 --world-size 1 -o "$TMP/one.mpt"
    OMP_NUM_THREADS=1 "$BIN/dino-step" train --ckpt "$TMP/one.mpt" --log "$TMP/one.jsonl" \
        --log-every 1 "$TMP/both.mpt"
    run mpi 120 "$BIN/dino-step" train --ckpt "$TMP/two.mpt" --log "$TMP/two.jsonl" \
        --log-every 1 --check-every 1 "$TMP/shard%r.mpt"
    assert_success
    run $PY "$TOOL" meta "$TMP/two.mpt" step
    assert_output "4"
    # the key part of each qkv bias has a gradient that is exactly 0 in
    # theory, float noise in practice, which Adam turns into +-lr steps: so
    # each role is compared as one vector, relative to its largest weight
    for role in student/ teacher/ adam_m/ adam_v/ center; do
        run $PY "$DIST" close "$TMP/two.mpt" "$TMP/one.mpt" $role 1e-5
        assert_success
    done
    # not trivially equal: the 2 ranks did train (and so did the one process)
    run $PY "$DIST" close "$TMP/two.mpt" "$TMP/shard0.mpt" center 1e-5 2> /dev/null
    assert_failure
    init --batch-size-per-gpu 2 --world-size 2 -o "$TMP/fresh.mpt"
    run $PY "$DIST" close "$TMP/two.mpt" "$TMP/fresh.mpt" student/ 1e-5
    assert_failure
    # rank 0 alone logs: 4 lines, the global mean loss and the global batch's lr
    $PY - "$TMP/one.jsonl" "$TMP/two.jsonl" <<'PY'
import json, sys
one, two = ([json.loads(l) for l in open(p)] for p in sys.argv[1:])
assert len(one) == len(two) == 4, (len(one), len(two))
for a, b in zip(one, two):
    assert a["step"] == b["step"] and a["lr"] == b["lr"], (a, b)
    assert abs(a["loss"] - b["loss"]) <= 1e-5 * abs(a["loss"]), (a["loss"], b["loss"])
    assert abs(a["grad_norm"]["total"] - b["grad_norm"]["total"]) <= 1e-4 * a["grad_norm"]["total"]
PY
}

@test "mpi: gradients reduced in buckets during backward (--bucket) equal one all-reduce after it" {
    needs_mpi
    shards
    init --batch-size-per-gpu 2 --world-size 2 -o "$TMP/after.mpt"
    cp "$TMP/after.mpt" "$TMP/bucketed.mpt"
    cp "$TMP/after.mpt" "$TMP/eager.mpt"
    run mpi 120 "$BIN/dino-step" train --ckpt "$TMP/after.mpt" --bucket 0 "$TMP/shard%r.mpt"
    assert_success
    # 1K: 256 floats, so the head, each block and the embeddings go as
    # buckets of their own, started while the backward pass goes on
    run mpi 120 "$BIN/dino-step" train --ckpt "$TMP/bucketed.mpt" --bucket 1K "$TMP/shard%r.mpt"
    assert_success
    # eager: each bucket reduced at once, so one started before its
    # gradients are final would miss the rest of them, on every run
    run mpi 120 -x GEODINO_COMM_EAGER=1 "$BIN/dino-step" train --ckpt "$TMP/eager.mpt" \
        --bucket 1K "$TMP/shard%r.mpt"
    assert_success
    run $PY "$TOOL" meta "$TMP/after.mpt" step
    assert_output "4"
    # a sum of two floats does not depend on the order: the same bits
    run $PY "$TOOL" diff "$TMP/after.mpt" "$TMP/bucketed.mpt"
    assert_success
    assert_output ""
    run $PY "$TOOL" diff "$TMP/after.mpt" "$TMP/eager.mpt"
    assert_success
    assert_output ""
    run "$BIN/dino-step" serve --ckpt "$TMP/after.mpt" --socket "$TMP/s" --bucket 1K
    assert_failure 2
    assert_output --partial "--bucket belong to 'dino-step train'"
    run "$BIN/dino-step" train --ckpt "$TMP/after.mpt" --bucket 12X "$TMP/shard0.mpt"
    assert_failure 2
    assert_output --partial "--bucket: '12X' is not a size"
}

@test "mpi: one rank through MPI's collectives (--distributed yes), with and without buckets, equals the plain run" {
    needs_mpi
    run "$ROOT/tests/cli/one_rank.sh" cpu "$BIN"
    assert_success
    assert_output --partial "matches the plain run (3 steps)"
}

@test "nccl: one rank through NCCL's collectives, with and without buckets, equals the plain run" {
    needs_mpi
    [ "$GEODINO_DEVICE" = cuda ] || skip "the suite runs on $GEODINO_DEVICE (GEODINO_TEST_DEVICE=cuda runs this)"
    [ -e "$BIN/../lib/geodino-nccl.so" ] || skip "no $BIN/../lib/geodino-nccl.so (no NCCL or no nvcc)"
    run "$ROOT/tests/cli/one_rank.sh" cuda "$BIN"
    assert_success
    assert_output --partial "matches the plain run (3 steps)"
}

@test "mpi: a 2-rank run resumes from its checkpoint to the same state as one run" {
    needs_mpi
    shards
    init --batch-size-per-gpu 2 --world-size 2 -o "$TMP/a.mpt"
    cp "$TMP/a.mpt" "$TMP/b.mpt"
    run mpi 120 "$BIN/dino-step" train --ckpt "$TMP/a.mpt" "$TMP/shard%r.mpt"
    assert_success
    $PY "$TOOL" split "$TMP/shard0.mpt" 2 "$TMP/p0.mpt" "$TMP/q0.mpt"
    $PY "$TOOL" split "$TMP/shard1.mpt" 2 "$TMP/p1.mpt" "$TMP/q1.mpt"
    run mpi 120 "$BIN/dino-step" train --ckpt "$TMP/b.mpt" "$TMP/p%r.mpt"
    assert_success
    run $PY "$TOOL" meta "$TMP/b.mpt" step
    assert_output "2"
    run mpi 120 "$BIN/dino-step" train --ckpt "$TMP/b.mpt" "$TMP/q%r.mpt"
    assert_success
    run $PY "$TOOL" meta "$TMP/b.mpt" step
    assert_output "4"
    run $PY "$TOOL" diff "$TMP/a.mpt" "$TMP/b.mpt"
    assert_success
    assert_output ""
}

@test "mpi: a checkpoint made for another world size is refused, and so is serve" {
    needs_mpi
    shards
    init --batch-size-per-gpu 2 --world-size 1 -o "$TMP/c.mpt"
    run mpi 60 "$BIN/dino-step" train --ckpt "$TMP/c.mpt" "$TMP/shard%r.mpt"
    assert_failure
    assert_output --partial "made for --world-size 1, this job has 2 ranks"
    # serve is one process
    run timeout 60 mpirun --oversubscribe --allow-run-as-root -np 2 "$BIN/dino-step" serve \
        --ckpt "$TMP/c.mpt" --socket "$TMP/s.sock"
    assert_failure
    assert_output --partial "serve is one process"
}

@test "mpi: the consistency guard stops the run when the ranks' weights diverge" {
    needs_mpi
    shards
    init --batch-size-per-gpu 2 --world-size 2 -o "$TMP/c.mpt"
    # rank 1's weights nudged after step 3: found by the check after step 4,
    # before that step's save
    run mpi 120 -x GEODINO_TEST_PERTURB=1:3 "$BIN/dino-step" train --ckpt "$TMP/c.mpt" \
        --check-every 2 --save-every 1 "$TMP/shard%r.mpt"
    assert_failure
    assert_output --partial "step 4: the ranks' weights differ"
    run $PY "$TOOL" meta "$TMP/c.mpt" step
    assert_output "3"
    # without the nudge the same run passes its checks
    init --batch-size-per-gpu 2 --world-size 2 --force -o "$TMP/c.mpt"
    run mpi 120 "$BIN/dino-step" train --ckpt "$TMP/c.mpt" --check-every 1 "$TMP/shard%r.mpt"
    assert_success
    run $PY "$TOOL" meta "$TMP/c.mpt" step
    assert_output "4"
}

@test "mpi: SIGTERM on one rank: all ranks stop at the same step, rank 0 saves, exit 0" {
    needs_mpi
    shards
    init --batch-size-per-gpu 2 --world-size 2 -o "$TMP/c.mpt"
    $PY "$TOOL" split "$TMP/shard0.mpt" 2 "$TMP/p0.mpt" "$TMP/q0.mpt"
    $PY "$TOOL" split "$TMP/shard1.mpt" 2 "$TMP/p1.mpt" "$TMP/q1.mpt"
    mkfifo "$TMP/in0" "$TMP/in1"
    feed "$TMP/in0" "$TMP/p0.mpt" "$TMP/go" "$TMP/q0.mpt"
    feed "$TMP/in1" "$TMP/p1.mpt" "$TMP/go" "$TMP/q1.mpt"
    mpi 120 "$BIN/dino-step" train --ckpt "$TMP/c.mpt" --log "$TMP/log.jsonl" --log-every 1 \
        "$TMP/in%r" > "$TMP/out.txt" 2>&1 3>&- &
    local job=$!
    wait_lines "$TMP/log.jsonl" 2
    local p
    p=$(rank_pid "$job")
    kill -TERM "$p"
    sleep 0.5
    touch "$TMP/go"   # the ranks get their next batch, then agree to stop
    local rc=0
    wait "$job" || rc=$?
    cat "$TMP/out.txt"
    [ "$rc" -eq 0 ]
    run $PY "$TOOL" meta "$TMP/c.mpt" step
    assert_output "2"
    [ "$(wc -l < "$TMP/log.jsonl")" -eq 2 ]
}

@test "mpi: a killed rank ends the job with an error, not a hang" {
    needs_mpi
    shards
    init --batch-size-per-gpu 2 --world-size 2 -o "$TMP/c.mpt"
    mkfifo "$TMP/in0" "$TMP/in1"
    feed "$TMP/in0" "$TMP/shard0.mpt"
    feed "$TMP/in1" "$TMP/shard1.mpt"
    mpi 60 "$BIN/dino-step" train --ckpt "$TMP/c.mpt" --log "$TMP/log.jsonl" --log-every 1 \
        "$TMP/in%r" > "$TMP/out.txt" 2>&1 3>&- &
    local job=$!
    wait_lines "$TMP/log.jsonl" 4
    kill -KILL "$(rank_pid "$job")"
    local rc=0
    wait "$job" || rc=$?
    cat "$TMP/out.txt"
    [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ]   # mpirun ended the job; timeout did not have to
    grep -q "signal 9" "$TMP/out.txt"
}

@test "mpi: a stopped rank: the other's watchdog ends the job after --comm-timeout" {
    needs_mpi
    shards
    init --batch-size-per-gpu 2 --world-size 2 -o "$TMP/c.mpt"
    $PY "$TOOL" split "$TMP/shard0.mpt" 2 "$TMP/p0.mpt" "$TMP/q0.mpt"
    mkfifo "$TMP/in0" "$TMP/in1"
    feed "$TMP/in0" "$TMP/p0.mpt" "$TMP/go" "$TMP/q0.mpt"
    feed "$TMP/in1" "$TMP/shard1.mpt"
    mpi 60 "$BIN/dino-step" train --ckpt "$TMP/c.mpt" --log "$TMP/log.jsonl" --log-every 1 \
        --comm-timeout 2 "$TMP/in%r" > "$TMP/out.txt" 2>&1 3>&- &
    local job=$!
    wait_lines "$TMP/log.jsonl" 2
    # stop one rank; whichever it is, the other one waits for it in a collective
    local p
    p=$(rank_pid "$job")
    kill -STOP "$p"
    touch "$TMP/go"
    local rc=0
    wait "$job" || rc=$?
    kill -KILL "$p" 2> /dev/null || true
    cat "$TMP/out.txt"
    [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ]
    grep -q "has waited more than 2 s for the other ranks" "$TMP/out.txt"
}
