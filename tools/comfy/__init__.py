"""ComfyUI: workflows for the experts and LoRAs (`circle-rotate workflow`)."""
