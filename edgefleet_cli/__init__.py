"""The `edgefleet` command for people: train, simulate, run the edge locally, demo, report.

This is the top layer: it may import every package of ours. No image runs it; each image runs
its own package's entry point (`python -m modules.sensor`, `python -m edgehub`, ...).
"""
