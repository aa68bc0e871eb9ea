"""Merging LoRAs into Wan2.2 experts: the plan, fp8 layouts, the streaming executor, pairs."""
