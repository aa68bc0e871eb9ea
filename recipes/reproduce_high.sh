#!/usr/bin/env bash
# reproduce_high.sh: train circle_rotate_h.safetensors, the LoRA of the Wan2.2 I2V-A14B high-noise
# expert, with the published command flag for flag (Jklaity/Circle-Rotate README, "Training"): the
# low-noise command with the high-noise expert, its own output folder and name.
#
# Needs: the high-noise expert in fp16 ($DIT_HIGH), the Wan2.1 VAE ($VAE), the dataset config
# ($DATASET_CONFIG) and the same caches as reproduce_low.sh (one `circle-rotate cache` serves both),
# musubi-tuner 0.3.4, accelerate, bitsandbytes (adamw8bit), a CUDA GPU (see recipes/README.md).
# Run:  bash recipes/reproduce_high.sh         (or: circle-rotate train high --recipe reproduce)
#
# The publication leaves implicit (musubi-tuner 0.3.4 defaults, unchanged here):
#   --network_alpha 1, so each LoRA update is scaled by alpha/dim = 1/32;
#   no --min_timestep/--max_timestep: this expert is trained on all 1000 timesteps, not only on
#   the ones it denoises at inference (t >= 900); recommended_high.sh restricts them;
#   --lr_scheduler constant, no warmup; --gradient_accumulation_steps 1; the batch size and
#   resolution come from $DATASET_CONFIG; LoRA weights saved in fp32 (--save_precision unset).
# The published command also samples from its prompts.txt (--t5 ... --sample_prompts prompts.txt
# --sample_every_n_epochs 1 --sample_at_first), a file the study does not publish: those flags are
# added when SAMPLE_PROMPTS names one. Samples are previews only: musubi saves and restores the RNG
# state around them, so the LoRA learned is the same with or without.
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"  # `sh recipe.sh`: dash has no arrays or pipefail
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

: "${OUTPUT_DIR_HIGH:=./outputs/high}"
: "${OUTPUT_NAME_HIGH:=circle_rotate_h}"

musubi env CUDA_VISIBLE_DEVICES="$GPU" "$ACCELERATE" launch --num_processes "$NUM_PROCESSES" \
    "$MUSUBI_SCRIPTS/wan_train_network.py" \
    --task i2v-A14B \
    --dit "$DIT_HIGH" \
    --dataset_config "$DATASET_CONFIG" \
    --vae "$VAE" \
    --sdpa --fp8_base \
    --optimizer_type adamw8bit \
    --learning_rate 2e-4 \
    ${CHECKPOINT_ARGS[@]+"${CHECKPOINT_ARGS[@]}"} \
    --max_data_loader_n_workers 1 \
    --persistent_data_loader_workers \
    --network_module networks.lora_wan \
    --network_dim 32 \
    --timestep_sampling shift \
    --discrete_flow_shift 8.0 \
    --max_train_epochs 100 \
    --save_every_n_epochs 1 \
    --seed 42 \
    --output_dir "$OUTPUT_DIR_HIGH" \
    --output_name "$OUTPUT_NAME_HIGH" \
    --mixed_precision fp16 \
    ${SWAP_ARGS[@]+"${SWAP_ARGS[@]}"} \
    ${SAMPLE_ARGS[@]+"${SAMPLE_ARGS[@]}"} \
    ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}
