"""What every job stands on: errors, atomic output, safetensors and video I/O, Wan2.2 facts, finding musubi-tuner."""
