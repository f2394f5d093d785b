"""Speed and quality benchmarks. Each module has a `main(argv)` that prints a table and
writes JSON under benchmarks/results/; `python -m benchmarks NAME [args]` runs one,
`python -m benchmarks` lists them. Results go into docs/benchmarks.md, always as ratios
against a reference measured in the same run."""
