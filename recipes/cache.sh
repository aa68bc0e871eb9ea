#!/usr/bin/env bash
# cache.sh: the latent and text-encoder caches that both experts train on. One pass serves both:
# musubi's caches depend on the VAE, the T5, the dataset and --i2v, never on the DiT expert.
#
# Needs: the Wan2.1 VAE ($VAE), the umt5-xxl T5 ($T5), the dataset config ($DATASET_CONFIG, with
# cache_directory set), musubi-tuner 0.3.4, a CUDA GPU (a CPU works, slowly: DEVICE=cpu).
# Run:  bash recipes/cache.sh                   (or: circle-rotate cache, which also checks the
#       disk first and splits the clips over several GPUs with --gpus 0,1)
#
# --i2v adds the first-frame image latent (latents_image_*) that I2V training needs; caches made
# without it fail in training with KeyError 'latents_image'. --skip_existing makes a re-run resume
# where an interrupted one stopped; --keep_cache stops a run from deleting cache files of clips it
# was not given (so shard runs that share one cache directory keep each other's files).
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"  # `sh recipe.sh`: dash has no arrays or pipefail
set -euo pipefail
: "${VAE_CACHE_CPU:=0}"  # caching fits a 24 GB card without it (common.sh's 1 is the training default)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

: "${DEVICE:=cuda}"        # cuda or cpu
: "${TE_BATCH_SIZE:=16}"   # captions per T5 batch (musubi docs' example); lower it on small GPUs
: "${FP8_T5:=0}"           # 1: T5 in fp8 for GPUs under ~16 GB (slightly different text embeddings)

LATENT_ARGS=()
if [[ "$VAE_CACHE_CPU" == 1 ]]; then LATENT_ARGS+=(--vae_cache_cpu); fi
TE_ARGS=()
if [[ "$FP8_T5" == 1 ]]; then TE_ARGS+=(--fp8_t5); fi

musubi env CUDA_VISIBLE_DEVICES="$GPU" "$PYTHON" "$MUSUBI_SCRIPTS/wan_cache_latents.py" \
    --dataset_config "$DATASET_CONFIG" \
    --vae "$VAE" \
    --i2v \
    --device "$DEVICE" \
    --skip_existing --keep_cache \
    ${LATENT_ARGS[@]+"${LATENT_ARGS[@]}"}

musubi env CUDA_VISIBLE_DEVICES="$GPU" "$PYTHON" "$MUSUBI_SCRIPTS/wan_cache_text_encoder_outputs.py" \
    --dataset_config "$DATASET_CONFIG" \
    --t5 "$T5" \
    --batch_size "$TE_BATCH_SIZE" \
    --device "$DEVICE" \
    --skip_existing --keep_cache \
    ${TE_ARGS[@]+"${TE_ARGS[@]}"}
