"""Shell recipes that drive musubi-tuner (shipped as package data; the .sh files are the source of truth)."""
