# Tables 1-5, the verdicts on the paper's claims, the figures and the one-file HTML report. Changing a template
# reruns only what it renders: table.html.j2 the tables (and all after them), claims.html.j2 the claims (and the
# report), report.html.j2 the report alone.

# quick jobs that read and write a few files: on a cluster they run where Snakemake runs, not as sbatch jobs
localrules:
    all,
    claims,
    fidelity,
    resolved_config,
    table,
    figure,
    report,
    tables,
    figures,
    table1,
    table2,
    table3,
    table4,
    table5,


rule table:
    input:
        results=lambda wildcards: TABLE_INPUTS[int(wildcards.number)],
        published=PUBLISHED_FILE,
        template=TABLE_TEMPLATE_FILE,
    output:
        csv="results/tables/table{number}.csv",
        html=report("results/tables/table{number}.html", caption="../report/table.rst", category="Tables",
                    labels={"table": "Table {number}"}),
    log:
        "logs/tables/table{number}.log",
    params:
        flags=f"--accuracy {config['accuracy']}" + (" --smoke" if config["smoke"] else ""),
    shell:
        "star table {wildcards.number} {input.results} --out {output.csv} {params.flags} > {log} 2>&1"


rule claims:
    input:
        tables=expand("results/tables/table{number}.csv", number=(1, 2, 4, 5)),
        profiles=PROFILES,
        published=PUBLISHED_FILE,
        template=CLAIMS_TEMPLATE_FILE,
    output:
        csv=CLAIMS,
        html=report(CLAIMS.replace(".csv", ".html"), caption="../report/claims.rst", category="Claims"),
    log:
        "logs/claims.log",
    shell:
        "star claims {input.tables} --profiles {input.profiles} --out {output.csv} > {log} 2>&1"


rule figure:
    input:
        lambda wildcards: FIGURE_INPUTS[wildcards.figure],
    output:
        png=report("results/figures/{figure}.png", caption="../report/figure.rst", category="Figures",
                   labels={"figure": "{figure}"}),
        svg="results/figures/{figure}.svg",
    log:
        "logs/figures/{figure}.log",
    params:
        # the training curves read each run's history.csv beside its metrics.json, the per-class figure each
        # evaluation's confusion matrix beside its JSON: only the former are named
        files=lambda wildcards, input: [f for f in input if not f.endswith(("history.csv", "-confusion.csv"))],
        flags="--smoke" if config["smoke"] else "",
    shell:
        "star figure {wildcards.figure} {params.files} --out {output.png} {params.flags} > {log} 2>&1"


rule fidelity:
    output:
        "results/fidelity.json",
    log:
        "logs/fidelity.log",
    shell:
        "star fidelity --out {output} > {log} 2>&1"


rule resolved_config:
    output:
        "results/config.json",
    log:
        "logs/config.log",
    params:
        config=config,
    run:
        star.io.write_json(output[0], params.config)
        shell("echo 'configuration files read: {workflow.configfiles}' > {log}")


rule report:
    input:
        tables=expand("results/tables/table{number}.csv", number=TABLE_INPUTS),
        fragments=expand("results/tables/table{number}.html", number=TABLE_INPUTS),
        figures=expand("results/figures/{figure}.png", figure=FIGURES),
        runs=RUNS,
        profiles=PROFILES,
        fidelity="results/fidelity.json",
        claims=CLAIMS,
        claims_fragment=CLAIMS.replace(".csv", ".html"),
        evaluations=EVALUATIONS,
        confusions=[evaluation.replace(".json", "-confusion.csv") for evaluation in EVALUATIONS],
        manifest=MANIFEST,
        config="results/config.json",
        published=PUBLISHED_FILE,
        template=REPORT_TEMPLATE_FILE,
    output:
        REPORT,
    log:
        "logs/report.log",
    shell:
        "star report --out {output} --tables {input.tables} --figures {input.figures} --runs {input.runs}"
        " --profiles {input.profiles} --fidelity {input.fidelity} --manifest {input.manifest} --config {input.config}"
        " --claims {input.claims} --evaluations {input.evaluations}"
        " --jobs {JOB_BENCHMARKS} --template {input.template} > {log} 2>&1"


rule tables:
    input:
        expand("results/tables/table{number}.csv", number=TABLE_INPUTS),


rule figures:
    input:
        expand("results/figures/{figure}.png", figure=FIGURES),


for number in TABLE_INPUTS:

    rule:
        name:
            f"table{number}"
        input:
            f"results/tables/table{number}.csv",


# a target per figure, named with underscores: `snakemake --cores 8 accuracy_cost`
for figure in FIGURES:

    rule:
        name:
            figure.replace("-", "_")
        localrule: True
        input:
            f"results/figures/{figure}.png",
