"""Defaults shared by the `star` command, the code it calls and the workflow's configuration.

The configuration (workflow/config/config.yaml) and its schema spell the same
values out for their readers; tests/test_defaults.py checks that they agree
with these.
"""

RECIPE = "default"  # which of a model's recipes a run starts from (its paper's)
SEED = 0  # of a training run
DEVICE = "auto"  # CUDA when present, else the CPU
ACCUMULATE = 1  # micro-batches per optimiser step
PADDED_FRAMES = 300  # frames per clip of the padded layout the baselines get (their papers')
PADDED_PERSONS = 2  # persons per frame of the padded layout
SYNTH_FRAMES = (32, 300)  # shortest and longest synthetic clip: about NTU's own range
SYNTH_MIN_FRAMES = 25  # the generator's shortest clip: a switched tracking ID keeps 12 frames either side

PROFILE_BENCHMARK = "ntu60/xsub"  # its test side gives the profiling batch
PROFILE_CLIPS = 16  # clips in the profiling batch: the paper's efficiency figures match 16
PROFILE_SEED = 0  # of the clip draw
PROFILE_REPEATS = 10  # timed forward passes (the median is reported)
PROFILE_WARMUP = 2  # untimed forward passes before them
PROFILER_RUNS = 3  # forward passes under torch's profiler for the per-category latency
SWEEP_REPEATS = 3  # timed passes per point of the latency sweep
