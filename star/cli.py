"""The `star` command: every step of the workflow, runnable by hand."""

from __future__ import annotations

import argparse
import sys

from star import __version__


def _preprocess(args: argparse.Namespace) -> None:
    from star.data.preprocess import preprocess

    summary = preprocess(args.raw, args.out, workers=args.workers, skip_bad=args.skip_bad,
                         progress=not args.quiet)
    for line in summary.lines():
        print(line)
    print(f"wrote {args.out}")


def _synth(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from star.data.synthetic import TINY, generate

    spec = replace(TINY, seed=args.seed, clips_per_action=args.clips_per_action)
    paths = generate(args.out, spec)
    print(f"wrote {len(paths)} synthetic .skeleton files to {args.out} (seed {args.seed})")


def _models(args: argparse.Namespace) -> None:
    import star.models as registry

    print(f"{'name':16s} {'layout':8s} {'params':>10s}  description")
    for name in registry.names():
        spec = registry.spec(name)
        params = sum(p.numel() for p in registry.build(name, args.classes).parameters())
        print(f"{name:16s} {spec.layout:8s} {params:10,d}  {spec.description}")


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
    pre.set_defaults(run=_preprocess)

    synth = commands.add_parser("synth", help="write the tiny synthetic NTU-format data set",
                                description="Write synthetic NTU-format .skeleton files (the tiny set used "
                                            "by the tests and the smoke workflow).")
    synth.add_argument("--out", required=True, metavar="DIR")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--clips-per-action", type=int, default=24, metavar="N")
    synth.set_defaults(run=_synth)

    models = commands.add_parser("models", help="list the registered models",
                                 description="List every registered model: its batch layout and parameter count.")
    models.add_argument("--classes", type=int, default=60, help="classes the parameter count assumes")
    models.set_defaults(run=_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"star {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
