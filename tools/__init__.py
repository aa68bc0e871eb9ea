"""circle_rotate.tools: inspect, convert and merge Wan2.2 LoRAs and experts, streaming."""
