#!/usr/bin/env bash
# First contact with GPU nodes: the checks to run, in order, before a real recipe. Each prints
# PASS, FAIL or SKIP (and why); the script goes on after a failure and exits non-zero if any failed.
#
#   bash scripts/gpu_smoke.sh                       # one node; MODEL defaults to Qwen/Qwen2.5-0.5B-Instruct
#   MODEL=/models/qwen2.5-0.5b bash scripts/gpu_smoke.sh
#   OR1_SMOKE_NODES=2 OR1_SMOKE_DIR=/shared/or1-smoke bash scripts/gpu_smoke.sh   # + the two-node run
#
# 1. the stack: a CUDA torch sees a GPU; vLLM and Ray are the tested versions
# 2. the learner alone on one GPU: tests/test_gpu_learner.py (NCCL, log-probs, ZeRO-3 vs FSDP2, bf16),
#    then init / update / save at the 1.5B (float32) and 7B (bfloat16 master) shapes, each phase's peak
#    memory within the dry run's estimate (benchmarks/learner_phases.py)
# 3. one GPU, colocated: vLLM sleeps (level 2) -> update -> push -> wake; 3 steps on a 0.5B model,
#    vLLM's log-probs agree with the learner's (rollout/logprob_abs_diff < LOGPROB_TOL)
# 4. split placement with tensor parallelism 2 (4 GPUs: 2 learner ranks, one engine on 2 GPUs)
# 5. two nodes (OR1_SMOKE_NODES=2, a Ray cluster already up: `ray start --head` on this node,
#    `ray start --address=HEAD:6379` on the other; OR1_SMOKE_DIR on the shared filesystem)
# Results go to docs/distributed.md ("What has and has not run on GPUs").
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python}
MODEL=${MODEL:-Qwen/Qwen2.5-0.5B-Instruct}
OUT=${OR1_SMOKE_DIR:-/tmp/or1-smoke}
NODES=${OR1_SMOKE_NODES:-1}
LOGPROB_TOL=${LOGPROB_TOL:-0.05}   # mean |vLLM - learner| log-prob per token, bf16 on both sides
mkdir -p "$OUT"
failed=0
step() {  # step NAME COMMAND...: run, print PASS/FAIL with the log's tail on failure
  local name=$1; shift
  local log="$OUT/$(echo "$name" | tr ' /' '__').log"
  if "$@" >"$log" 2>&1; then echo "PASS  $name"; else echo "FAIL  $name (log: $log)"; tail -n 15 "$log" | sed 's/^/      /'; failed=1; fi
}
skip() { echo "SKIP  $1 ($2)"; }

GPUS=$(nvidia-smi -L 2>/dev/null | wc -l)
echo "or1 GPU smoke: $GPUS GPU(s) on $(hostname), model $MODEL, logs in $OUT"

# --- 1. the stack ---------------------------------------------------------------------------------
step "1 stack: CUDA torch sees a GPU" $PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA'; print(torch.__version__, torch.cuda.get_device_name())"
step "1 stack: tested vLLM and Ray" $PY -c "
from or1.startup import check_stack_versions
import vllm, ray
print('vllm', vllm.__version__, 'ray', ray.__version__)
assert not check_stack_versions(), 'untested versions (see above)'"

# --- 2. the learner alone on one GPU --------------------------------------------------------------
step "2 learner: pytest -m gpu tests/test_gpu_learner.py" $PY -m pytest -q -m gpu tests/test_gpu_learner.py
step "2 learner: init/update/save at 1.5B, float32 master" \
  $PY benchmarks/learner_phases.py --shape 1.5b --json "$OUT/learner_phases_1.5b.json"
step "2 learner: init/update/save at 7B, bfloat16 master" \
  $PY benchmarks/learner_phases.py --shape 7b --master-dtype bfloat16 --json "$OUT/learner_phases_7b.json"

# --- 3..5: the whole loop on the tiny arithmetic task with a real model ---------------------------
# tiny_cpu's data and reward with a 0.5B model on GPUs; or1's tiny bootstrap writes only the data.
run_loop() {  # run_loop NAME OUTPUT_DIR OVERRIDES...: 3 steps, then check log-prob agreement and pushes
  local dir=$2; shift 2
  rm -rf "$dir"
  $PY -m or1.train recipe=tiny_cpu model.path="$MODEL" trainer.output_dir="$dir" trainer.total_steps=3 \
      trainer.val_every=0 trainer.save_every=0 model.dtype=float32 learner.compute_dtype=bfloat16 \
      rollout.dtype=bfloat16 rollout.enforce_eager=true rollout.gpu_memory_utilization=0.35 \
      rollout.max_model_len=512 rollout.max_response_length=64 data.max_prompt_length=128 \
      learner.max_tokens_per_micro_batch=16384 algorithm.filter.drop_zero_advantage=false trainer.ray_num_cpus=null \
      "$@" || return 1
  $PY - "$dir/metrics.jsonl" "$LOGPROB_TOL" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
steps = [r for r in rows if "rollout/logprob_abs_diff" in r]
assert len(steps) == 3, f"{len(steps)} of 3 steps logged"
diffs = [r["rollout/logprob_abs_diff"] for r in steps]
print("logprob_abs_diff per step:", diffs, "| sync/bytes:", [r.get("sync/bytes") for r in steps])
assert all(r.get("sync/bytes", 0) > 0 for r in steps), "a step pushed no weights"
# step 1 samples with the initial weights; steps 2-3 with pushed ones: agreement there proves the push landed
assert max(diffs) < float(sys.argv[2]), f"vLLM and the learner disagree: {max(diffs)} >= {sys.argv[2]}"
EOF
}

if [ "$GPUS" -ge 1 ]; then
  step "3 one GPU colocated: sleep -> update -> push -> log-prob agreement" run_loop x "$OUT/colocated" \
    trainer.gpus_per_node=1 trainer.placement=colocated learner.num_workers=1 rollout.num_engines=1
else skip "3 one GPU colocated" "no GPU"; fi

if [ "$GPUS" -ge 4 ]; then
  step "4 split, tensor parallel 2 (4 GPUs)" run_loop x "$OUT/split_tp2" \
    trainer.gpus_per_node=4 trainer.placement=split learner.num_workers=2 rollout.num_engines=1 \
    rollout.tensor_parallel_size=2
else skip "4 split, tensor parallel 2" "needs 4 GPUs, this node has $GPUS"; fi

if [ "$NODES" -ge 2 ]; then
  # colocated over two nodes: one learner rank and one engine per GPU; the output directory must be
  # on the shared filesystem (every rank checks it sees the driver's marker there)
  step "5 two nodes, colocated" run_loop x "$OUT/two_nodes" trainer.ray_address=auto trainer.nnodes=2 \
    trainer.gpus_per_node="$GPUS" trainer.placement=colocated learner.num_workers=$((2 * GPUS)) \
    rollout.num_engines=$((2 * GPUS))
else skip "5 two nodes" "set OR1_SMOKE_NODES=2 with a two-node Ray cluster up"; fi

[ "$failed" = 0 ] && echo "all run checks passed" || echo "some checks FAILED"
exit "$failed"
