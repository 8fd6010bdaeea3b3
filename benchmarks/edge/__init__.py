"""Parts of `benchmarks/edge_throughput.py`: harness, bundles, phases, report."""
