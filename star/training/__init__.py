"""Training: the trainer (`star train`) and the parts evaluation and profiling share with it."""
