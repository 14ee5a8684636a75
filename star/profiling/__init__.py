"""Profiling: what a forward pass costs, per model and per module, on one fixed batch.

- `batch`: the profiling batch, drawn once from a test split and given to every
  model in its own layout (STAR compact, the baselines padded to 300 x 2, or
  the frames `--padded-frames` gives).
- `counting`: parameters, and multiply-accumulates from three independent
  counters (fvcore, DeepSpeed's flops profiler, the analytic count), each
  broken down by the paper's module categories and by named module.
- `timing`: whole-forward latency, latency per module category from
  torch's profiler, and peak memory of the forward pass.
- `profile`: one model's profile as the JSON of `results/profile/{model}.json`,
  and the clip-length and batch-size sweep.
"""
