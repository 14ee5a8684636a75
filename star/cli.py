"""The `star` command: every step of the workflow, runnable by hand."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from star import __version__, defaults
from star.errors import InputError, StarError


def _preprocess(args: argparse.Namespace) -> None:
    from star.data.preprocess import preprocess

    summary = preprocess(args.raw, args.out, workers=args.workers, skip_bad=args.skip_bad,
                         progress=not args.quiet)
    for line in summary.lines():
        print(line)
    print(f"wrote {args.out}")


def _import(args: argparse.Namespace) -> None:
    if args.format == "pyskl":
        from star.data.pyskl import import_pyskl

        if args.benchmark:
            raise InputError("--benchmark is for npz files: a pyskl pickle names its benchmarks in its split lists")
        summary = import_pyskl(args.paths, args.out, progress=not args.quiet)
    else:
        from star.data.padded_arrays import import_npz

        summary = import_npz(args.paths, args.out, args.benchmark, progress=not args.quiet)
    for line in summary.lines():
        print(line)
    print(f"wrote {args.out}")


def _synth(args: argparse.Namespace) -> None:
    import tempfile
    from dataclasses import replace
    from pathlib import Path

    from star.data.synthetic import TINY, generate

    shortest, longest = args.frames
    spec = replace(TINY, seed=args.seed, clips_per_action=args.clips_per_action, min_frames=shortest,
                   max_frames=longest)
    if args.format == "raw":
        paths = generate(args.out, spec)
        print(f"wrote {len(paths)} synthetic .skeleton files of {shortest}-{longest} frames to {args.out} "
              f"(seed {args.seed})")
        return
    from star.data.padded_arrays import write_npz_files
    from star.data.preprocess import preprocess
    from star.data.pyskl import write_pyskl_files
    from star.data.store import CompactStore

    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp) / "raw", spec)
        preprocess([Path(tmp) / "raw"], Path(tmp) / "store", progress=False)
        write = write_pyskl_files if args.format == "pyskl" else write_npz_files
        paths = write(CompactStore(Path(tmp) / "store"), args.out)
    print(f"wrote the synthetic set (seed {args.seed}) as {', '.join(map(str, paths))}")


def _models(args: argparse.Namespace) -> None:
    from star import registry

    width = max(len(name) for name in registry.names())
    print(f"{'name':{width}s} {'layout':8s} {'params':>10s}  description")
    for name in registry.names():
        spec = registry.spec(name)
        params = sum(p.numel() for p in registry.build(name, args.classes).parameters())
        print(f"{name:{width}s} {spec.layout:8s} {params:10,d}  {spec.description}")


def _recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainingRecipe field (--lr, --batch-size, --betas B1 B2, ...); unset flags keep the recipe's."""
    import typing
    from dataclasses import fields

    from star.recipe import OPTIMIZERS, SCHEDULES, TrainingRecipe

    choices = {"optimizer": OPTIMIZERS, "schedule": SCHEDULES}
    group = parser.add_argument_group("training recipe (each overrides the model's recipe)")
    hints = typing.get_type_hints(TrainingRecipe)
    for field in fields(TrainingRecipe):
        flag, hint = f"--{field.name.replace('_', '-')}", hints[field.name]
        if hint is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        elif typing.get_origin(hint) is tuple:
            element, *rest = typing.get_args(hint)
            group.add_argument(flag, type=element, nargs="*" if rest == [Ellipsis] else len(rest) + 1,
                               default=None, metavar=element.__name__.upper())
        elif field.name in choices:
            group.add_argument(flag, choices=choices[field.name], default=None)
        else:
            group.add_argument(flag, type=hint, default=None, metavar=hint.__name__.upper())


def _recipe_overrides(args: argparse.Namespace) -> dict:
    from dataclasses import fields

    from star.recipe import TrainingRecipe

    values = {field.name: getattr(args, field.name) for field in fields(TrainingRecipe)}
    return {name: tuple(value) if isinstance(value, list) else value
            for name, value in values.items() if value is not None}


def _train(args: argparse.Namespace) -> None:
    from star.training.config import run_config
    from star.training.trainer import train

    config = run_config(args.store, args.benchmark, args.model, args.out, recipe=args.recipe,
                        overrides=_recipe_overrides(args), fill=args.fill, seed=args.seed, device=args.device,
                        workers=args.workers, group_by_length=args.group_by_length, accumulate=args.accumulate,
                        amp=args.amp, padded_frames=args.padded_frames, deterministic=args.deterministic,
                        max_clips=args.max_clips, compile=args.compile)
    metrics = train(config, progress=not args.quiet, log_every_s=args.log_every, replace_changed=args.replace_changed)
    print(f"{args.out}: {metrics['epochs']} epochs, test top-1 {metrics['top1_pct']:.2f}% "
          f"(best {metrics['best_top1_pct']:.2f}% at epoch {metrics['best_epoch']}), {metrics['wall_s']:.0f} s")


def _evaluate(args: argparse.Namespace) -> None:
    from star.evaluate import evaluate

    result = evaluate(args.run, args.checkpoint, args.split, store=args.store, out=args.out, device=args.device,
                      workers=args.workers, batch_size=args.batch_size)
    print(f"{result['checkpoint']} (epoch {result['epoch']}) on {result['benchmark']} {args.split}: "
          f"top-1 {result['top1_pct']:.2f}%, top-5 {result['top5_pct']:.2f}% over {result['clips']} clips")


def _convert(args: argparse.Namespace) -> None:
    from star.convert.checkpoint import convert

    summary = convert(args.model, args.checkpoint, args.store, args.benchmark, args.out)
    print(f"{args.out}: {summary['tensors']} tensors of {summary['code']} as {args.model}; "
          f"score it with star evaluate --run {args.out}")


def _fidelity(args: argparse.Namespace) -> None:
    from star.fidelity import measure
    from star.io import write_result

    result = measure()
    write_result(args.out, result, "fidelity")
    for row in result["points"]:
        print(f"{row['as_run']:14s} {row['point']:28s} max |logit change| {row['max_logit_change']:.3g}")


def _profile(args: argparse.Namespace) -> None:
    from star.device import resolve_device
    from star.io import write_result
    from star.profiling.profile import profile, set_threads

    device = resolve_device(args.device)
    threads = set_threads(args.threads)
    result = profile(args.store, args.benchmark, args.model, clips=args.clips, seed=args.seed, device=device,
                     compile=args.compile,
                     repeats=args.repeats, warmup=args.warmup, profiler_runs=args.profiler_runs,
                     sweep_frames=args.sweep_frames, sweep_clips=args.sweep_clips, sweep_repeats=args.sweep_repeats,
                     padded_frames=args.padded_frames)
    write_result(args.out, result, "profile")
    summary, batch = result["summary"], result["batch"]
    print(f"{args.model} on {batch['clips']} clips ({batch['total_frames']} frames, {batch['rows']} rows), "
          f"{device}, {threads} threads: {summary['latency_ms']:.1f} ms, {summary['params']:,d} parameters, "
          f"{summary['gmacs']:.2f} GMACs")
    print(f"wrote {args.out}")


def _table(args: argparse.Namespace) -> None:
    from star.io import read_json
    from star.report.html import write_table
    from star.report.tables import build

    results = [{**read_json(path), "_path": path} for path in args.inputs]
    table = build(args.number, results, accuracy=args.accuracy, smoke=args.smoke)
    csv_path, html_path = write_table(table, args.out)
    print(f"table {args.number}: {len(table.rows)} rows x {len(table.columns)} columns from {len(results)} files; "
          f"wrote {csv_path} and {html_path}")


def _claims(args: argparse.Namespace) -> None:
    from star.io import read_result
    from star.report.claims import assess_all
    from star.report.html import write_claims
    from star.report.tables import read_cells

    profiles = [read_result(p, "profile") for p in args.profiles]
    devices = {profile["model"]: profile["device"] for profile in profiles}
    padding = {p["model"]: p["batch"]["padded"]["shape"][2]  # (clips, 3, frames, 25, persons)
               for p in profiles if p["layout"] == "padded" and "padded" in p["batch"]}
    assessments = assess_all(read_cells(args.tables), devices, padding)
    csv_path, html_path = write_claims(assessments, args.out)
    for a in assessments:
        print(f"{a.claim.key:16s} {a.verdict:17s} {a.reason}")
    print(f"wrote {csv_path} and {html_path}")


def _figure(args: argparse.Namespace) -> None:
    from star.report.figures import draw, save

    paths = save(draw(args.name, args.inputs, smoke=args.smoke), args.out)
    print(f"wrote {' and '.join(map(str, paths))}")


def _report(args: argparse.Namespace) -> None:
    from star.report.html import REPORT_TEMPLATE, write_report

    out = write_report(args.out, tables=args.tables, figures=args.figures, runs=args.runs, profiles=args.profiles,
                       manifest=args.manifest, config=args.config, fidelity=args.fidelity, claims=args.claims,
                       evaluations=args.evaluations,
                       jobs=[file for path in map(Path, args.jobs)
                             for file in (sorted(path.rglob("*.tsv")) if path.suffix != ".tsv" else [path])],
                       template=args.template or REPORT_TEMPLATE)
    print(f"wrote {out}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="star", description=__doc__)
    parser.add_argument("--version", action="version", version=f"star {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from star.data.preprocess import default_workers

    pre = commands.add_parser("preprocess", help="raw NTU .skeleton files -> compact store",
                              description="Parse raw NTU RGB+D .skeleton files, select at most two persons "
                                          "per clip and write a compact store with its manifest.json.")
    pre.add_argument("--raw", nargs="+", required=True, metavar="DIR",
                     help="folders of raw .skeleton files (NTU 120: both the S001-S017 and the S018-S032 folder)")
    pre.add_argument("--out", required=True, metavar="STORE", help="store folder to write (replaced atomically)")
    pre.add_argument("--workers", type=int, default=default_workers(), metavar="N",
                     help="parsing processes (default: the CPUs this process may use)")
    pre.add_argument("--skip-bad", action="store_true",
                     help="skip unreadable files and list them in the summary instead of stopping")
    pre.add_argument("--quiet", action="store_true", help="no progress bar")
    pre.set_defaults(handler=_preprocess)

    imp = commands.add_parser("import", help="pyskl annotation pickles or CTR-GCN .npz arrays -> compact store",
                              description="Import NTU RGB+D in a preprocessed form the field's toolkits ship "
                                          "(already denoised: no body selection is run) into a compact store, "
                                          "keeping the source's own split lists.")
    imp.add_argument("--format", required=True, choices=("pyskl", "npz"),
                     help="pyskl: ntu60_3danno.pkl / ntu120_3danno.pkl; npz: NTU60_CS.npz-style padded arrays")
    imp.add_argument("paths", nargs="+", metavar="PATH", help="the files to import into one store")
    imp.add_argument("--out", required=True, metavar="STORE", help="store folder to write (replaced atomically)")
    imp.add_argument("--benchmark", default=None, metavar="NAME",
                     help="npz: the benchmark of a single file whose name is not CTR-GCN's (e.g. ntu60/xsub)")
    imp.add_argument("--quiet", action="store_true", help="no progress bar")
    imp.set_defaults(handler=_import)

    synth = commands.add_parser("synth", help="write the tiny synthetic NTU-format data set",
                                description="Write synthetic NTU-format .skeleton files (the tiny set used "
                                            "by the tests and the smoke workflow).")
    synth.add_argument("--out", required=True, metavar="DIR")
    synth.add_argument("--format", choices=("raw", "pyskl", "npz"), default="raw",
                       help="raw .skeleton files, or preprocessed as pyskl's two pickles or CTR-GCN's four .npz")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--clips-per-action", type=int, default=24, metavar="N")
    synth.add_argument("--frames", type=int, nargs=2, default=list(defaults.SYNTH_FRAMES), metavar=("MIN", "MAX"),
                       help="shortest and longest clip (default: %(default)s, about NTU's range; the smoke "
                            "configuration's short clips make its jobs quick)")
    synth.set_defaults(handler=_synth)

    models = commands.add_parser("models", help="list the registered models",
                                 description="List every registered model: its batch layout and parameter count.")
    models.add_argument("--classes", type=int, default=60, help="classes the parameter count assumes")
    models.set_defaults(handler=_models)

    from star.names import BENCHMARKS, DEVICES, FILLS

    workers = min(4, max(1, default_workers() - 1))
    train = commands.add_parser("train", help="train one model on one benchmark (resumes an interrupted run)",
                                description="Train a registered model with its recipe (or overrides) and write "
                                            "history.csv, metrics.json, checkpoint.pt and best.pt into --out. "
                                            "Run again with the same flags to resume after an interruption. "
                                            "Several GPUs: torchrun --nproc-per-node G -m star.cli train ...")
    train.add_argument("--store", required=True, metavar="STORE", help="compact store (star preprocess)")
    train.add_argument("--benchmark", required=True, choices=list(BENCHMARKS))
    train.add_argument("--model", required=True, metavar="NAME", help="a model of `star models`")
    train.add_argument("--out", required=True, metavar="RUN", help="run folder")
    train.add_argument("--seed", type=int, default=defaults.SEED)
    train.add_argument("--recipe", default=defaults.RECIPE, metavar="NAME",
                       help="which of the model's recipes to start from (STAR: paper or code)")
    train.add_argument("--device", choices=DEVICES, default=defaults.DEVICE)
    train.add_argument("--amp", action="store_true", help="mixed precision (float16 on CUDA, bfloat16 on the CPU)")
    train.add_argument("--compile", action="store_true", help="train the model compiled by torch.compile")
    train.add_argument("--workers", type=int, default=workers, metavar="N",
                       help=f"data loader processes (default {workers})")
    train.add_argument("--group-by-length", action="store_true", help="batch clips of similar length together")
    train.add_argument("--accumulate", type=int, default=defaults.ACCUMULATE, metavar="N",
                       help="split each batch into N micro-batches (same batch size, less memory)")
    train.add_argument("--fill", choices=FILLS, default=None,
                       help="padded layout: fill short clips by repeating them or with zeros (default: the model's)")
    train.add_argument("--padded-frames", type=int, default=defaults.PADDED_FRAMES, metavar="T",
                       help=f"padded layout: frames per clip (default {defaults.PADDED_FRAMES})")
    train.add_argument("--deterministic", action="store_true", help="deterministic CUDA kernels (slower)")
    train.add_argument("--max-clips", type=int, default=None, metavar="N",
                       help="train and test on at most N clips of each side, evenly spread (quick checks)")
    train.add_argument("--replace-changed", action="store_true",
                       help="if --out holds a run of other settings, move it into --out/replaced-<time>/ and start "
                            "afresh instead of refusing (the workflow passes it: Snakemake reruns a job whose "
                            "settings changed)")
    train.add_argument("--quiet", action="store_true", help="no progress bar or progress lines")
    train.add_argument("--log-every", type=float, default=60.0, metavar="SECONDS",
                       help="without a terminal: seconds between progress lines")
    _recipe_arguments(train)
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("evaluate", help="a run's checkpoint: top-1, top-5, per class, confusion",
                                   description="Evaluate a run's checkpoint on one side of its benchmark and "
                                               "write JSON and CSV files into RUN/evaluation (or --out).")
    evaluate.add_argument("--run", required=True, metavar="RUN", help="run folder (star train --out)")
    evaluate.add_argument("--checkpoint", default="best", metavar="best|last|PATH")
    evaluate.add_argument("--split", choices=("test", "train"), default="test")
    evaluate.add_argument("--store", default=None, metavar="STORE", help="the store, if it moved since training")
    evaluate.add_argument("--out", default=None, metavar="DIR")
    evaluate.add_argument("--device", choices=DEVICES, default=defaults.DEVICE)
    evaluate.add_argument("--workers", type=int, default=workers, metavar="N")
    evaluate.add_argument("--batch-size", type=int, default=None, metavar="N", help="default: the run's")
    evaluate.set_defaults(handler=_evaluate)

    conv = commands.add_parser("convert", help="a reference code's checkpoint -> a run folder for star evaluate",
                               description="Map a checkpoint of a public reference code (ST-GCN model zoo, ST-TR, "
                                           "STAR) tensor by tensor onto its registered \"as run\" model and write "
                                           "a run folder that star evaluate scores on the store.")
    conv.add_argument("--model", required=True, help="the registered model the checkpoint's code runs, e.g. "
                                                     "st-gcn-code, st-tr-s, star-64-code")
    conv.add_argument("--checkpoint", required=True, metavar="FILE.pt")
    conv.add_argument("--store", required=True, metavar="STORE", help="compact store to score on")
    conv.add_argument("--benchmark", required=True, choices=list(BENCHMARKS))
    conv.add_argument("--out", required=True, metavar="RUN")
    conv.set_defaults(handler=_convert)

    fid = commands.add_parser("fidelity", help="each point where paper and code differ: its effect on the logits",
                              description="Switch each point of the \"as run\" models back to the paper's form "
                                          "alone, on the same weights and the golden clips, and record the largest "
                                          "change of a logit (JSON to --out).")
    fid.add_argument("--out", required=True, metavar="FILE.json")
    fid.set_defaults(handler=_fidelity)

    prof = commands.add_parser("profile", help="parameters, GMACs (three counters), latency and memory of a model",
                               description="Profile one model on a fixed batch of test clips: parameters, MACs "
                                           "from fvcore, DeepSpeed and the analytic count, latency (whole and per "
                                           "module category) and peak memory; JSON to --out.")
    prof.add_argument("--store", required=True, metavar="STORE", help="compact store (star preprocess)")
    prof.add_argument("--benchmark", default=defaults.PROFILE_BENCHMARK,
                      help="the test side of this benchmark gives the clips")
    prof.add_argument("--model", required=True, metavar="NAME", help="a registered model (star models)")
    prof.add_argument("--out", required=True, metavar="FILE.json")
    prof.add_argument("--clips", type=int, default=defaults.PROFILE_CLIPS, metavar="N",
                      help="clips in the profiling batch")
    prof.add_argument("--seed", type=int, default=defaults.PROFILE_SEED, help="seed of the clip draw")
    prof.add_argument("--device", choices=DEVICES, default=defaults.DEVICE)
    prof.add_argument("--compile", action="store_true",
                      help="time the model compiled by torch.compile (the MAC counters, the per-category "
                           "breakdown and the sweep run the eager model)")
    prof.add_argument("--threads", type=int, default=None, metavar="N",
                      help="torch CPU threads (default: every core this process may use)")
    prof.add_argument("--repeats", type=int, default=defaults.PROFILE_REPEATS, metavar="N",
                      help="timed forward passes")
    prof.add_argument("--warmup", type=int, default=defaults.PROFILE_WARMUP, metavar="N",
                      help="untimed forward passes before them")
    prof.add_argument("--profiler-runs", type=int, default=defaults.PROFILER_RUNS, metavar="N",
                      help="forward passes under torch's profiler for the per-category latency")
    prof.add_argument("--sweep-frames", type=int, nargs="*", default=None, metavar="T",
                      help="also time one-person clips of each of these lengths (e.g. 32 64 128 300)")
    prof.add_argument("--sweep-clips", type=int, nargs="*", default=None, metavar="B",
                      help="batch sizes of the sweep (default: 1 and --clips)")
    prof.add_argument("--sweep-repeats", type=int, default=defaults.SWEEP_REPEATS, metavar="N")
    prof.add_argument("--padded-frames", type=int, default=defaults.PADDED_FRAMES, metavar="T",
                      help=f"padded layout (the baselines): frames per clip (default {defaults.PADDED_FRAMES}, "
                           "their papers')")
    prof.set_defaults(handler=_profile)

    from star.names import FIGURES

    table = commands.add_parser("table", help="one of the paper's Tables 1-5 as CSV and an HTML fragment",
                                description="Tables 1 and 4 from runs' metrics.json, Tables 2, 3 and 5 from "
                                            "profile JSONs; each cell reproduced beside published.")
    table.add_argument("number", type=int, choices=range(1, 6), metavar="N", help="table number, 1-5")
    table.add_argument("inputs", nargs="+", metavar="FILE.json", help="runs' metrics.json or profile JSONs")
    table.add_argument("--out", required=True, metavar="tableN.csv", help="the .html is written beside it")
    table.add_argument("--accuracy", choices=("best", "final"), default="best",
                       help="top-1 of the best epoch (as the papers' code reports) or of the last")
    table.add_argument("--smoke", action="store_true", help="mark every cell as from a smoke run")
    table.set_defaults(handler=_table)

    claims = commands.add_parser("claims", help="a verdict on each of the paper's claims, as CSV and an HTML fragment",
                                 description="Each claim of the paper (paper_tables.yaml) judged on the table CSVs: "
                                             "holds, does not hold, or not measured here, with the reason.")
    claims.add_argument("tables", nargs="+", metavar="tableN.csv", help="the CSVs of Tables 1, 2, 4 and 5")
    claims.add_argument("--profiles", nargs="*", default=[], metavar="FILE.json",
                        help="the profiles behind Tables 2 and 5 (the device each latency was timed on)")
    claims.add_argument("--out", required=True, metavar="claims.csv", help="the .html is written beside it")
    claims.set_defaults(handler=_claims)

    figure = commands.add_parser("figure", help="one figure as PNG and SVG",
                                 description="; ".join(f"{name}: {title}" for name, title in FIGURES.items()))
    figure.add_argument("name", choices=list(FIGURES), metavar="NAME", help=", ".join(FIGURES))
    figure.add_argument("inputs", nargs="+", metavar="FILE",
                        help="profile JSONs, runs' metrics.json (training-curves), the store's manifest.json, "
                             "table CSVs 1 and 2 (accuracy-cost) or star evaluate's JSONs (per-class)")
    figure.add_argument("--out", required=True, metavar="NAME.png", help="the .svg is written beside it")
    figure.add_argument("--smoke", action="store_true", help="mark the figure as from a smoke run")
    figure.set_defaults(handler=_figure)

    report = commands.add_parser("report", help="the one-file HTML report",
                                 description="Tables, figures, the paper's contradictions and what was run, "
                                             "in one self-contained HTML file.")
    report.add_argument("--out", required=True, metavar="index.html")
    report.add_argument("--tables", nargs="+", required=True, metavar="tableN.csv",
                        help="table CSVs (their .html fragments beside them are embedded)")
    report.add_argument("--figures", nargs="*", default=[], metavar="NAME.png")
    report.add_argument("--runs", nargs="*", default=[], metavar="metrics.json")
    report.add_argument("--profiles", nargs="*", default=[], metavar="FILE.json")
    report.add_argument("--manifest", default=None, metavar="manifest.json", help="the store's manifest")
    report.add_argument("--config", default=None, metavar="config.json", help="the workflow's resolved config")
    report.add_argument("--jobs", nargs="*", default=[], metavar="FILE.tsv|DIR",
                        help="Snakemake's benchmark files of the jobs (wall and CPU time, peak memory), or folders "
                             "of them (a folder not yet made holds none)")
    report.add_argument("--fidelity", default=None, metavar="fidelity.json", help="star fidelity's result")
    report.add_argument("--claims", default=None, metavar="claims.csv",
                        help="star claims' CSV (its .html fragment beside it opens the report)")
    report.add_argument("--evaluations", nargs="*", default=[], metavar="FILE.json",
                        help="star evaluate's JSONs on one benchmark: each model's most confused class pairs")
    report.add_argument("--template", default=None, metavar="FILE.html.j2", help="default: the package's")
    report.set_defaults(handler=_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("train", "evaluate", "profile"):
        from star import runtime

        runtime.apply()
    try:
        args.handler(args)
    except (StarError, OSError) as error:  # the suite's errors, and a file the system refuses: one line
        if isinstance(error, OSError) and not isinstance(error, StarError) and error.filename is None:
            raise  # not about a file: keeps its traceback, like anything else
        print(f"star {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
