"""musubi-tuner dataset TOMLs (shipped as package data)."""
