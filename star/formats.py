"""The format tag of every file the suite writes, `star-<name>-<version>`, in one light module: readers (the
tables, the report) check a file's tag without importing the code that writes it (and with it torch). The
JSON result files take theirs from their schema (star/schemas)."""

from star.schemas import format_tag

RUN_FORMAT = format_tag("run")  # a run's metrics.json (star train)
PROFILE_FORMAT = format_tag("profile")  # results/profile/{model}.json (star profile)
FIDELITY_FORMAT = format_tag("fidelity")  # results/fidelity.json (star fidelity)
EVALUATION_FORMAT = format_tag("evaluation")  # RUN/evaluation/{checkpoint}-{split}.json (star evaluate)
STORE_FORMAT = format_tag("manifest")  # a compact store's manifest.json (star preprocess, star import)
CHECKPOINT_FORMAT = "star-checkpoint-1"  # checkpoint.pt and best.pt (star train, star convert)
