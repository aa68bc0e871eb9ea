"""The kit checking itself on a CPU: tiny models, synthetic data, smoke run, demo, benchmarks."""
