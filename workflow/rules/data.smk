# Raw skeleton files -> one compact store for all four benchmarks (NTU 60 is setups S001-S017 of NTU 120).

if config["data"]["synthetic"]:

    rule synth:
        output:
            directory(config["data"]["raw_dirs"][0]),
        log:
            "logs/synth.log",
        shell:
            "star synth --out {output} > {log} 2>&1"


rule preprocess:
    input:
        config["data"]["raw_dirs"],
    output:
        MANIFEST,
    log:
        "logs/preprocess.log",
    params:
        store=lambda wildcards, output: os.path.dirname(output[0]),
    threads: config["data"]["workers"]
    shell:
        "star preprocess --raw {input} --out {params.store} --workers {threads} --quiet > {log} 2>&1"
