"""Build edgefleet's container images offline: base images, wheelhouse, checked image builds (see cli.py)."""
