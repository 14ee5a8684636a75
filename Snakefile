# The STAR reproduction: `snakemake --cores 8 all` makes reports/index.html (README: Quickstart).
# Rules live in workflow/rules/, one topic each; the configuration is explained in workflow/config/config.yaml.
import os

import yaml
from snakemake.utils import min_version, validate

from star.config_values import typed

min_version("9.0")


# the paper's settings; --configfile workflow/config/smoke.yaml (or your own) is read after it and wins
configfile: os.path.join(workflow.basedir, "workflow/config/config.yaml")


SCHEMA = os.path.join(workflow.basedir, "workflow/schemas/config.schema.yaml")
with open(SCHEMA) as schema:
    config.update(typed(config, yaml.safe_load(schema)))  # --config gives nested numbers as strings
validate(config, SCHEMA)


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/profile.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        REPORT,
    default_target: True
