# One training run per (benchmark, model, seed). A failed or killed job keeps its checkpoint.pt, and the
# same job run again resumes from its last finished epoch (star train); Snakemake removes only the
# declared outputs, which `star train` writes whole. When an edited configuration changes a run's
# settings, Snakemake reruns the job and `--replace-changed` moves the old run aside into
# replaced-<time>/ in the run folder, so it retrains from scratch (the report marks it redone).


rule train:
    input:
        manifest=MANIFEST,
    output:
        metrics="results/runs/{dataset}/{benchmark}/{model}/seed{seed}/metrics.json",
        history="results/runs/{dataset}/{benchmark}/{model}/seed{seed}/history.csv",
    log:
        "logs/runs/{dataset}/{benchmark}/{model}/seed{seed}.log",
    benchmark:
        "results/benchmarks/train/{dataset}/{benchmark}/{model}/seed{seed}.tsv"
    params:
        store=lambda wildcards, input: os.path.dirname(input.manifest),
        options=lambda wildcards: training_options(wildcards.model),
    threads: config["training"]["threads"]
    resources:
        gpu=config["training"]["gpus"],
    shell:
        "star train --store {params.store} --benchmark {wildcards.dataset}/{wildcards.benchmark}"
        " --model {wildcards.model} --seed {wildcards.seed} --out $(dirname {output.metrics})"
        " {params.options} --replace-changed --quiet > {log} 2>&1"
