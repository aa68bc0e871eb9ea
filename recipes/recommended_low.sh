#!/usr/bin/env bash
# recommended_low.sh: train the low-noise expert's LoRA with musubi-tuner's documented Wan2.2 I2V
# split (docs/wan.md, "Recommended Min/Max Timestep Settings for Wan2.2"): only the timesteps this
# expert denoises at inference, 0 to the boundary (900 of 1000), sampled with the shape the full
# range would have (--preserve_distribution_shape), and the LoRA alpha written out.
# Everything else is the published command (reproduce_low.sh).
#
# Needs: the same files as reproduce_low.sh ($DIT_LOW fp16, $VAE, $DATASET_CONFIG with caches made
# by `circle-rotate cache`), musubi-tuner 0.3.4, accelerate, bitsandbytes, a CUDA GPU.
# Run:  bash recipes/recommended_low.sh        (or: circle-rotate train low --recipe recommended)
# The boundary is $BOUNDARY (0.9) in common.sh, converted once to $BOUNDARY_T (900) for musubi.
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"  # `sh recipe.sh`: dash has no arrays or pipefail
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

: "${OUTPUT_DIR_LOW:=./outputs/recommended/low}"
: "${OUTPUT_NAME_LOW:=circle_rotate_l}"

musubi env CUDA_VISIBLE_DEVICES="$GPU" "$ACCELERATE" launch --num_processes "$NUM_PROCESSES" \
    "$MUSUBI_SCRIPTS/wan_train_network.py" \
    --task i2v-A14B \
    --dit "$DIT_LOW" \
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
    --min_timestep 0 \
    --max_timestep "$BOUNDARY_T" \
    --preserve_distribution_shape \
    --max_train_epochs 100 \
    --save_every_n_epochs 1 \
    --seed 42 \
    --output_dir "$OUTPUT_DIR_LOW" \
    --output_name "$OUTPUT_NAME_LOW" \
    --mixed_precision fp16 \
    ${SWAP_ARGS[@]+"${SWAP_ARGS[@]}"} \
    ${SAMPLE_ARGS[@]+"${SAMPLE_ARGS[@]}"} \
    ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}
