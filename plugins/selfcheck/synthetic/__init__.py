"""Synthetic data the project makes itself: turntable videos with exact ground truth and
tiny Wan-shaped checkpoints with the real key names and dtypes."""
