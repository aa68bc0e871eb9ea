"""musubi-tuner's jobs: recipes, commands, cache, preflight, train, generate, downloads (`cache`, `train`, `generate`)."""
