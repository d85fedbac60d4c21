"""The recall service: the channel registry, the user towers in numpy, multi-interest, the merge and
rerank, and the serving state they read. The one path the API, the CLI, the benchmarks and the harness use."""
