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


# The per-class evidence: a run's checkpoint (best or last, as the tables report) scored class by class.
rule evaluate:
    input:
        metrics="results/runs/{dataset}/{benchmark}/{model}/seed{seed}/metrics.json",
        manifest=MANIFEST,
    output:
        evaluation="results/runs/{dataset}/{benchmark}/{model}/seed{seed}/evaluation/{checkpoint_name}-test.json",
        per_class="results/runs/{dataset}/{benchmark}/{model}/seed{seed}/evaluation/{checkpoint_name}-test-per-class.csv",
        confusion="results/runs/{dataset}/{benchmark}/{model}/seed{seed}/evaluation/{checkpoint_name}-test-confusion.csv",
    log:
        "logs/evaluate/{dataset}/{benchmark}/{model}/seed{seed}/{checkpoint_name}.log",
    benchmark:
        "results/benchmarks/evaluate/{dataset}/{benchmark}/{model}/seed{seed}/{checkpoint_name}.tsv"
    params:
        store=lambda wildcards, input: os.path.dirname(input.manifest),
        device=config["training"]["device"],
        workers=config["training"]["workers"],
    threads: config["training"]["threads"]
    resources:
        gpu=config["training"]["gpus"],
    shell:
        "star evaluate --run $(dirname {input.metrics}) --checkpoint {wildcards.checkpoint_name} --split test"
        " --store {params.store} --device {params.device} --workers {params.workers} > {log} 2>&1"
