"""Studies of trained models: evaluation, ablation sweeps and their report, the benchmark,
and the figures."""
