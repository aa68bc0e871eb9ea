#!/usr/bin/env bash
# recommended_high.sh: train the high-noise expert's LoRA with musubi-tuner's documented Wan2.2 I2V
# split (docs/wan.md, "Recommended Min/Max Timestep Settings for Wan2.2"): only the timesteps this
# expert denoises at inference, the boundary (900 of 1000) to 1000, sampled with the shape the full
# range would have (--preserve_distribution_shape), and the LoRA alpha written out.
# Everything else is the published command (reproduce_high.sh).
#
# Needs: the same files as reproduce_high.sh ($DIT_HIGH fp16, $VAE, $DATASET_CONFIG with caches made
# by `circle-rotate cache`), musubi-tuner 0.3.4, accelerate, bitsandbytes, a CUDA GPU.
# Run:  bash recipes/recommended_high.sh       (or: circle-rotate train high --recipe recommended)
# The boundary is $BOUNDARY (0.9) in common.sh, converted once to $BOUNDARY_T (900) for musubi.
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"  # `sh recipe.sh`: dash has no arrays or pipefail
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

: "${OUTPUT_DIR_HIGH:=./outputs/recommended/high}"
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
    --network_alpha "$NETWORK_ALPHA" \
    --timestep_sampling shift \
    --discrete_flow_shift 8.0 \
    --min_timestep "$BOUNDARY_T" \
    --max_timestep 1000 \
    --preserve_distribution_shape \
    --max_train_epochs 100 \
    --save_every_n_epochs 1 \
    --seed 42 \
    --output_dir "$OUTPUT_DIR_HIGH" \
    --output_name "$OUTPUT_NAME_HIGH" \
    --mixed_precision fp16 \
    ${SWAP_ARGS[@]+"${SWAP_ARGS[@]}"} \
    ${SAMPLE_ARGS[@]+"${SAMPLE_ARGS[@]}"} \
    ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}
