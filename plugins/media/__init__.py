"""Orbit measurement on footage: camera motion, direction and speed, scene cuts."""
