"""halluscope.probes owns the experiments: give a sampler part of a real example, draw N
continuations, measure their diversity and closeness to the truth, sweep, and report. It
may import gpt, tokenizers and data, never app."""
