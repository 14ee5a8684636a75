"""Training: the trainer (`star train`) and the parts evaluation and checkpoint conversion share with it."""
