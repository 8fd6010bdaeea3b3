"""Repository scripts; scripts.images builds the container images (run as `python3 -m scripts.images`)."""
