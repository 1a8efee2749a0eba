#!/usr/bin/env bash
# GPU readiness in one run (about 5 minutes; the steps' time limits add up to 560 s): the CUDA tests, xformers
# against SDPA (outputs and speed), bf16 MFU of a training step on vl-medium and language-small, FSDP2 with bf16
# mixed precision on one GPU, and train/pretrain.py under torchrun with --dist fsdp --precision bf16.
#
#   bash bench/gpu.sh                  # from the repository root, on a machine with a CUDA GPU
#   ASSETS=assets bash bench/gpu.sh    # language-small with the prepared real SmolLM2 / MiniLM (assets/smollm2,
#                                      # assets/minilm) instead of random weights
#
# Everything goes to bench/results/gpu/: gpu.md (the GPU by name, torch/xformers versions, each step's exit code
# and time, one section per benchmark), the benchmarks' JSON, each step's log, and the CUDA tests' junit XML; and
# also to $OUT when that variable is set. Without a CUDA GPU it stops at once. Every step runs even when an
# earlier one failed (one lent GPU, one try); the script exits 1 at the end if any step failed.
set -euo pipefail

RES=bench/results/gpu
if ! python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "no CUDA GPU: this script needs one (torch.cuda.is_available() is False)" >&2
    exit 1
fi
mkdir -p "$RES"
rm -f "$RES"/*.json "$RES"/*.log "$RES"/*.xml "$RES"/steps.tsv "$RES"/gpu.md
nvidia-smi > "$RES/nvidia-smi.txt" 2>&1 || true
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
failed=()
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

publish() {  # copy what is there so far to $OUT, so a run cut short still brings its results back
    if [ -n "${OUT:-}" ]; then
        mkdir -p "$OUT/gpu" && cp -r "$RES"/. "$OUT/gpu/"
    fi
}

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $RES/NAME.log, record exit code and time
    local name=$1 limit=$2 start rc
    shift 2
    echo "== $name (limit ${limit}s)"
    start=$(date +%s)
    set +e
    timeout "$limit" "$@" > "$RES/$name.log" 2>&1
    rc=$?
    set -e
    printf '%s\t%s\t%s\n' "$name" "$rc" "$(($(date +%s) - start))" >> "$RES/steps.tsv"
    tail -n 5 "$RES/$name.log"
    if [ "$rc" -ne 0 ]; then
        failed+=("$name")
        echo "!! $name failed (exit $rc); log: $RES/$name.log"
    fi
    publish
}

step cuda_tests 120 python -m pytest -q -m cuda tests/test_cuda.py --junitxml="$RES/cuda_tests.xml"
step pinned_memory 55 python -m pytest -q tests/test_pipeline.py -k test_workers_pin_batches_for_the_gpu
step attention 70 python bench/gpu.py attention --out "$RES"
step mfu 115 python bench/gpu.py mfu --out "$RES" ${ASSETS:+--assets "$ASSETS"}
step fsdp 60 python -m torch.distributed.run --standalone --nproc_per_node=1 bench/gpu.py fsdp --out "$RES" --batch 8 --seq 256 --steps 8
step world 20 python -c "from data.world import generate_world; generate_world('$WORK/world', seed=0, n_train=400, \
n_val=16, n_test=4, n_heldout=6, n_docs=100)"
step pretrain_fsdp_bf16 100 python -m torch.distributed.run --standalone --nproc_per_node=1 train/pretrain.py --world "$WORK/world" \
    --out "$WORK/run" --max_steps 60 --dist fsdp --precision bf16 --vision_warmup_steps 0 --warmup_steps 10 \
    --eval_every 0 --eval_batches 2 --log_every 1 --ckpt_every 30
step pretrain_check 20 python bench/gpu.py pretrain --out "$RES" --metrics "$WORK/run/metrics.jsonl"
python bench/gpu.py summary --out "$RES" > /dev/null || failed+=(summary)
publish
cat "$RES/gpu.md" 2> /dev/null || true
if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED: ${failed[*]} (logs in $RES)" >&2
    exit 1
fi
echo "all GPU checks passed; results in $RES"
