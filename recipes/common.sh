# common.sh: settings shared by the circle-rotate recipes. Sourced by them, not run.
#
# Every setting below is a variable the environment overrides, for example
#   DIT_LOW=/data/wan2.2_i2v_low_noise_14B_fp16.safetensors GRADIENT_CHECKPOINTING=1 bash recipes/reproduce_low.sh
# Paths default to the layout that `circle-rotate download models -o models` creates.
# `circle-rotate train|cache` read the recipes through this file too (CIRCLE_ROTATE_PRINT=1 prints
# each musubi-tuner command instead of running it), so what they run is what you would run.

# --- paths -------------------------------------------------------------------------------------
: "${MODELS:=models}"
# The fp16 experts (Comfy-Org repackage). musubi-tuner cannot train on fp8_scaled files (docs/wan.md).
: "${DIT_LOW:=$MODELS/wan2.2_i2v_low_noise_14B_fp16.safetensors}"
: "${DIT_HIGH:=$MODELS/wan2.2_i2v_high_noise_14B_fp16.safetensors}"
# The Wan2.1 VAE serves both experts. The publication names its pickle release Wan2.1_VAE.pth;
# wan_2.1_vae.safetensors holds the same weights and is what `circle-rotate download` fetches.
: "${VAE:=$MODELS/wan_2.1_vae.safetensors}"
# The umt5-xxl text encoder: only caching and sample generation load it, training reads the cache.
: "${T5:=$MODELS/models_t5_umt5-xxl-enc-bf16.pth}"
: "${DATASET_CONFIG:=datasets/circle/circle.toml}"
: "${PYTHON:=python}"
: "${ACCELERATE:=accelerate}"
# musubi-tuner's scripts: the installed package, else the published command's checkout layout.
: "${MUSUBI_SCRIPTS:=$("$PYTHON" -c 'import os, musubi_tuner; print(os.path.dirname(musubi_tuner.__file__))' 2>/dev/null || echo src/musubi_tuner)}"

# --- devices -----------------------------------------------------------------------------------
: "${GPU:=0}"            # CUDA_VISIBLE_DEVICES of the run ("0,1" with NUM_PROCESSES=2 for data parallel)
# accelerate processes. Above 1 this is data parallel (`circle-rotate train --data-parallel` writes the
# accelerate config): the global batch grows with the process count, which changes the maths; see
# recipes/README.md, "Many GPUs, many machines".
: "${NUM_PROCESSES:=1}"

# --- memory and speed only: none of these changes what is learned ---------------------------
# The defaults are the published command's (they fit a 24 GB card); `circle-rotate train --dry-run`
# prints what each card size needs, e.g. BLOCKS_TO_SWAP=0 GRADIENT_CHECKPOINTING_CPU_OFFLOAD=0 on 80 GB,
# which trains faster.
: "${BLOCKS_TO_SWAP:=30}"                     # DiT blocks streamed from CPU RAM (0-39), ~0.36 GB VRAM each with fp8_base
: "${GRADIENT_CHECKPOINTING:=1}"              # 1: recompute block activations in backward (~30% slower, far less VRAM)
: "${GRADIENT_CHECKPOINTING_CPU_OFFLOAD:=1}"  # 1: also park the checkpointed block inputs in CPU RAM (needs the above)
: "${VAE_CACHE_CPU:=1}"                       # 1: the VAE's feature cache in CPU RAM (latent caching, samples)
# Disk only: keep just the last N epoch files (each rank-32 LoRA is ~0.6 GB in fp32; 100 epochs ~61 GB).
: "${SAVE_LAST_N_EPOCHS:=}"
# Data parallel only: minutes a process waits for the others at a collective before NCCL gives up
# (musubi's --ddp_timeout; torch's default is 10). Raise it when rank 0's checkpoint saves to slow
# shared storage or sample generation keep the other ranks waiting.
: "${DDP_TIMEOUT:=}"
# Samples during training (saved and restored RNG state around them, so training is unchanged).
# I2V prompts need a first frame: "prompt text --i first.png" (musubi's prompt-file syntax). The
# published command samples its prompts.txt every epoch and before the first step; the study does not
# publish that file, so sampling is off until SAMPLE_PROMPTS names one.
: "${SAMPLE_PROMPTS:=}"
: "${SAMPLE_EVERY_N_EPOCHS:=1}"
: "${SAMPLE_AT_FIRST:=1}"   # 1: also sample before the first step (the untrained model, to compare)

# Each group goes where the published command has it.
CHECKPOINT_ARGS=()
if [[ "$GRADIENT_CHECKPOINTING" == 1 ]]; then
    CHECKPOINT_ARGS+=(--gradient_checkpointing)
    # musubi offloads only checkpointed activations: without checkpointing the flag would do nothing
    if [[ "$GRADIENT_CHECKPOINTING_CPU_OFFLOAD" == 1 ]]; then CHECKPOINT_ARGS+=(--gradient_checkpointing_cpu_offload); fi
fi
SWAP_ARGS=()
if [[ "$BLOCKS_TO_SWAP" != 0 ]]; then SWAP_ARGS+=(--blocks_to_swap "$BLOCKS_TO_SWAP"); fi
if [[ "$VAE_CACHE_CPU" == 1 ]]; then SWAP_ARGS+=(--vae_cache_cpu); fi
SAMPLE_ARGS=()
if [[ -n "$SAMPLE_PROMPTS" ]]; then
    SAMPLE_ARGS+=(--t5 "$T5" --sample_prompts "$SAMPLE_PROMPTS" --sample_every_n_epochs "$SAMPLE_EVERY_N_EPOCHS")
    if [[ "$SAMPLE_AT_FIRST" == 1 ]]; then SAMPLE_ARGS+=(--sample_at_first); fi
fi
EXTRA_ARGS=()
if [[ -n "$DDP_TIMEOUT" ]]; then EXTRA_ARGS+=(--ddp_timeout "$DDP_TIMEOUT"); fi
if [[ -n "$SAVE_LAST_N_EPOCHS" ]]; then EXTRA_ARGS+=(--save_last_n_epochs "$SAVE_LAST_N_EPOCHS"); fi

# --- the Wan2.2 I2V expert split (recommended_*.sh) ---------------------------------------------
# Where the high-noise expert hands over to the low-noise one, as a fraction of the 1000 training
# timesteps (musubi's i2v-A14B config: boundary 0.900). Written once; converted here for
# --min_timestep/--max_timestep, which take integers on the 0-1000 scale.
: "${BOUNDARY:=0.9}"
BOUNDARY_T=$(awk -v b="$BOUNDARY" 'BEGIN { printf "%d", b * 1000 + 0.5 }')
# LoRA alpha. musubi's default is 1 (the published runs relied on it): the update is scaled by
# alpha / network_dim = 1/32. The recommended recipes state it; raising it raises the effective
# learning rate by the same factor.
: "${NETWORK_ALPHA:=1}"

# musubi CMD...: run a musubi-tuner command; with CIRCLE_ROTATE_PRINT=1 print it instead, as
# "CIRCLE_ROTATE_COMMAND", the argument count, then the arguments, each NUL-terminated.
musubi() {
    if [[ "${CIRCLE_ROTATE_PRINT:-0}" == 1 ]]; then
        printf 'CIRCLE_ROTATE_COMMAND\0%s\0' "$#"
        printf '%s\0' "$@"
    else
        printf '+ %s\n' "$*" >&2
        "$@"
    fi
}
