"""The format tag of every file the suite writes, in one light module: readers (the tables, the report) check
a file's tag without importing the code that writes it (and with it torch)."""

RUN_FORMAT = "star-run-1"  # a run's metrics.json (star train)
CHECKPOINT_FORMAT = "star-checkpoint-1"  # checkpoint.pt and best.pt (star train, star convert)
PROFILE_FORMAT = "star-profile/1"  # results/profile/{model}.json (star profile)
FIDELITY_FORMAT = "star-fidelity-1"  # results/fidelity.json (star fidelity)
