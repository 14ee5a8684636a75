"""The names the workflow and the package share, in a module that imports only the standard library.

Building the workflow's job graph reads them (workflow/rules/common.smk), so a
dry run neither needs nor pays for torch, pandas or matplotlib; so does the
`star` command's parser, so a job imports only what its subcommand uses. The benchmark
table, the figures and the data forms are taken from here by the modules that
use them; the model registry builds its names itself, and tests/test_names.py
checks that it registers exactly MODELS.
"""

from __future__ import annotations

from pathlib import Path

# benchmark -> (data set, classes, criterion): the rules behind each are star.data.splits
BENCHMARKS = {
    "ntu60/xsub": ("ntu60", 60, "xsub"),
    "ntu60/xview": ("ntu60", 60, "xview"),
    "ntu120/xsub": ("ntu120", 120, "xsub"),
    "ntu120/xset": ("ntu120", 120, "xset"),
}

DEVICES = ("auto", "cpu", "cuda")  # where a command computes (star.device resolves "auto")
FILLS = ("repeat", "zero")  # how the padded layout fills a clip shorter than its frames (star.data.batching)

# every model star.registry registers, in its order
MODELS = ("star-64", "star-64-full", "star-64-code", "star-64-full-code",
          "star-128", "star-128-full", "star-128-code", "star-128-full-code",
          "st-gcn", "st-gcn-code", "st-tr", "st-tr-s", "st-tr-t")

FIGURES = {  # name -> title in the report (drawn by star.report.figures)
    "breakdown-macs": "Figure 8. MACs by module type",
    "breakdown-params": "Figure 9. Parameters by module type",
    "breakdown-latency": "Figure 10. Latency by module type",
    "training-curves": "Figure 11. Train and test top-1 per epoch",
    "storage": "Beyond the paper: bytes of the compact store against the padded layout",
    "latency-sweep": "Beyond the paper: forward latency against clip length",
    "accuracy-cost": "Beyond the paper: top-1 against GMACs and latency, reproduced beside published",
    "per-class": "Beyond the paper: per-class top-1 of STAR minus each baseline",
}

# the files the field's toolkits ship NTU RGB+D in (star.data.pyskl, star.data.padded_arrays)
PYSKL_FILES = {"ntu60": "ntu60_3danno.pkl", "ntu120": "ntu120_3danno.pkl"}  # data set -> pyskl's file name
PYSKL_CRITERIA = {"ntu60": ("xsub", "xview"), "ntu120": ("xsub", "xset")}  # the split lists of each
NPZ_BENCHMARKS = {"NTU60_CS": "ntu60/xsub", "NTU60_CV": "ntu60/xview",  # CTR-GCN's file stem -> benchmark
                  "NTU120_CSub": "ntu120/xsub", "NTU120_CSet": "ntu120/xset"}

TEMPLATES = Path(__file__).parent / "report" / "templates"  # Jinja2 templates of the tables and the report
REPORT_TEMPLATE = TEMPLATES / "report.html.j2"
TABLE_TEMPLATE = TEMPLATES / "table.html.j2"
CLAIMS_TEMPLATE = TEMPLATES / "claims.html.j2"
