#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one go (sized for about 10 minutes on one H100):
#   1. the real xformers kernel against SDPA (tests/test_attention.py runs its GPU test);
#   2. benchmarks/caption_speed.py on the GPU at batch 1 and 8, genvl's engine against transformers' generate()
#      with and without its static cache, on the shipped captioner and on the ViT-B/16 + GPT-2 shape;
#   3. the captioner trained for a few hundred steps on one GPU plainly, under FSDP and under DeepSpeed ZeRO-2
#      (the same config and data: the final losses should agree), each run exported and captioning.
# Logs and JSON reports go to OUT (default gpu_checks/), runs and data to WORK; a failed step is reported and
# the next one still runs, and the exit status says whether any failed. Needs xformers and deepspeed installed
# (pip install "genvl[xformers]" deepspeed).
#   bash benchmarks/gpu_checks.sh [OUT] [WORK]
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu_checks}
work=${2:-$(mktemp -d)}
python=${PYTHON:-python3}
steps=${STEPS:-300}
mkdir -p "$out" "$work"
failed=()

step() { # step NAME COMMAND...: runs COMMAND, its output to the screen and to OUT/NAME.log
    local name=$1
    shift
    echo "== $name: $*"
    if ! "$@" 2>&1 | tee "$out/$name.log"; then
        echo "FAILED: $name"
        failed+=("$name")
    fi
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.csv"
"$python" -c "import torch, xformers, deepspeed, transformers; print('torch', torch.__version__, 'xformers', \
xformers.__version__, 'deepspeed', deepspeed.__version__, 'transformers', transformers.__version__)"

# 1. xformers: -rs lists skipped tests, so a GPU test that did not run shows why
step xformers "$python" -m pytest -q -rs tests/test_attention.py

# 2. caption speed
for batch in 1 8; do
    step "speed_small_b$batch" "$python" benchmarks/caption_speed.py --device cuda --batch-size "$batch" \
        --static-cache --runs 10 --warmup 3 --json "$out/speed_small_b$batch.json"
    step "speed_vitb16_b$batch" "$python" benchmarks/caption_speed.py --device cuda --batch-size "$batch" \
        --random-vit-b16-gpt2 --max-new-tokens 20 --static-cache --runs 5 --warmup 2 \
        --json "$out/speed_vitb16_b$batch.json"
done

# 3. distributed backends, one process each
step data "$python" -m genvl data scenes --out "$work/data" --num-images 20000 --split train --seed 0 \
    --workers "$(nproc)"
for backend in single fsdp deepspeed_zero2; do
    launch=(accelerate launch --num_processes 1)
    [ "$backend" != single ] && launch+=(--config_file "configs/accelerate/$backend.yaml")
    step "train_$backend" "${launch[@]}" -m genvl.recipes.train_captioner --config configs/train_captioner.json \
        --train_data_dir "$work/data/train" --output_dir "$work/$backend" --max_train_steps "$steps" \
        --lr_warmup_steps 50 --checkpointing_steps "$steps"
    step "export_$backend" "$python" -m genvl export captioner --run "$work/$backend" --out "$work/$backend-pipeline"
    step "caption_$backend" "$python" -m genvl caption examples/images --model "$work/$backend-pipeline" \
        --device cuda
done
grep -h "step $steps/$steps" "$out"/train_*.log

if [ ${#failed[@]} -gt 0 ]; then
    echo "failed: ${failed[*]}"
    exit 1
fi
echo "all GPU checks ran"
