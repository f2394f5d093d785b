"""Speed and quality benchmarks. Each module has a `main(argv)` that prints a table and
writes JSON under benchmarks/results/; `python -m benchmarks NAME [args]` runs one,
`python -m benchmarks` lists them, `python -m benchmarks all` runs the default suite
(`make bench`) and `python -m benchmarks docs` regenerates docs/benchmarks.md from the JSON,
where every figure is a ratio against a reference measured in the same run."""
