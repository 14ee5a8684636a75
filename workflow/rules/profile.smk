# One profile per model on the fixed profiling batch: Tables 2, 3 and 5 and Figures 8-10. By default a
# profiling job takes every core Snakemake was given, so no other job runs beside it and skews its timing.


rule profile:
    input:
        manifest=MANIFEST,
    output:
        "results/profile/{model}.json",
    log:
        "logs/profile/{model}.log",
    benchmark:
        "results/benchmarks/profile/{model}.tsv"
    params:
        store=lambda wildcards, input: os.path.dirname(input.manifest),
        options=profile_options(),
    threads: config["profiling"]["threads"] or all_cores()
    resources:
        gpu=config["profiling"]["gpus"],
    shell:
        "star profile --store {params.store} --model {wildcards.model} --out {output} --threads {threads}"
        " {params.options} > {log} 2>&1"
