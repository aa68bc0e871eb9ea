"""LoRA files: keys, reading and writing, inspect, convert, resize, combine."""
