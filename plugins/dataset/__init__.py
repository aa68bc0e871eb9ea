"""Clips to a musubi-tuner dataset TOML, and its checker (`circle-rotate config`, `check-config`)."""
