# The data -> one compact store for all the benchmarks it serves: raw .skeleton files preprocessed here (NTU 60
# is setups S001-S017 of NTU 120), or pyskl pickles / CTR-GCN arrays imported as their toolkits made them.

if DATA["synthetic"]:

    rule synth:
        output:
            directory(DATA["raw_dirs"][0]) if DATA["source"] == "raw" else DATA["files"],
        log:
            "logs/synth.log",
        params:
            folder=DATA["raw_dirs"][0] if DATA["source"] == "raw" else os.path.dirname(DATA["files"][0]),
            frames=" ".join(map(str, DATA["synthetic_frames"])),
        shell:
            "star synth --format {DATA[source]} --out {params.folder} --frames {params.frames} > {log} 2>&1"


if DATA["source"] == "raw":

    rule preprocess:
        input:
            DATA["raw_dirs"],
        output:
            MANIFEST,
        log:
            "logs/preprocess.log",
        benchmark:
            STORE_BENCHMARK
        params:
            store=lambda wildcards, output: os.path.dirname(output[0]),
        threads: DATA["workers"]
        shell:
            "star preprocess --raw {input} --out {params.store} --workers {threads} --quiet > {log} 2>&1"

else:

    rule import_store:
        input:
            DATA["files"],
        output:
            MANIFEST,
        log:
            "logs/import.log",
        benchmark:
            STORE_BENCHMARK
        params:
            store=lambda wildcards, output: os.path.dirname(output[0]),
        shell:
            "star import --format {DATA[source]} {input} --out {params.store} --quiet > {log} 2>&1"
