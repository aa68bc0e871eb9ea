"""circle_rotate.eval: subject drift, orbit and image metrics on generated videos, on a CPU."""
