import json
import subprocess
import sys

from star.cli import main
from star.data.store import CompactStore


def test_help_lists_the_subcommands():
    result = subprocess.run([sys.executable, "-m", "star.cli", "--help"], capture_output=True, text=True, check=True)
    assert "preprocess" in result.stdout and "synth" in result.stdout


def test_synth_then_preprocess_prints_the_summary(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "raw"), "--clips-per-action", "3", "--frames", "26", "40"]) == 0
    assert main(["preprocess", "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "store"),
                 "--workers", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "wrote 24 synthetic .skeleton files of 26-40 frames" in out
    assert "read 24 files: 24 clips kept (9 with two persons)" in out
    assert f"wrote {tmp_path / 'store'}" in out
    assert json.loads((tmp_path / "store" / "manifest.json").read_text())["clips"] == 24
    frames = CompactStore(tmp_path / "store").clips["frames"]
    assert 26 <= frames.min() and frames.max() <= 40 and frames.max() > frames.min()


def test_errors_are_one_line_and_exit_2(tmp_path, capsys):
    assert main(["preprocess", "--raw", str(tmp_path / "missing"), "--out", str(tmp_path / "store")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("star preprocess: error: raw skeleton folder") and "ROSE Lab" in err
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "S001C001P001R001A001.skeleton").write_text("2\n1\n")
    assert main(["preprocess", "--raw", str(raw), "--out", str(tmp_path / "store"), "--quiet"]) == 2
    assert "S001C001P001R001A001.skeleton:2: file ends early" in capsys.readouterr().err
    assert not (tmp_path / "store").exists()


def test_models_lists_every_registered_model_with_its_parameter_count(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:3] for line in out.splitlines()[1:]}
    assert rows["star-64"] == ["compact", "426,494"] and rows["star-128-full-code"] == ["compact", "1,262,462"]
    assert len({line.index("compact") for line in out.splitlines()[1:] if " compact " in line}) == 1  # one column


def test_synth_as_npz_then_import_prints_what_padding_was_removed(tmp_path, capsys):
    assert main(["synth", "--format", "npz", "--out", str(tmp_path / "npz"), "--clips-per-action", "4"]) == 0
    files = sorted(str(p) for p in (tmp_path / "npz").iterdir())
    assert [p.rsplit("/", 1)[1] for p in files] == ["NTU120_CSet.npz", "NTU120_CSub.npz", "NTU60_CS.npz",
                                                   "NTU60_CV.npz"]
    assert main(["import", "--format", "npz", files[2], "--out", str(tmp_path / "store"), "--quiet"]) == 0
    out = capsys.readouterr().out
    # NTU 60's 6 actions x 4 clips, the 2 mutual actions' with two persons, the others an all-zero second slot
    assert "read 1 files: 24 clips (8 with two persons)" in out and "dropped 16 all-zero person slots" in out
    manifest = json.loads((tmp_path / "store/manifest.json").read_text())
    assert manifest["benchmarks"] == {"ntu60/xsub": {"train": 18, "test": 6}}
    assert f"cut {24 * 300 - CompactStore(tmp_path / 'store').clips['frames'].sum()} padding frames" in out
    assert main(["import", "--format", "pyskl", files[2], "--benchmark", "ntu60/xsub", "--out",
                 str(tmp_path / "other")]) == 2
    assert capsys.readouterr().err.startswith("star import: error: --benchmark is for npz files")


def _run_models_raising(error: str) -> subprocess.CompletedProcess:
    """`star models` with its handler replaced by one raising `error` (a Python expression)."""
    code = ("import sys, star.cli as cli\n"
            "from star.errors import StarError\n"
            f"def boom(args): raise {error}\n"
            "cli._models = boom\n"
            "sys.exit(cli.main(['models']))")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_a_star_error_is_one_line_and_any_other_error_keeps_its_traceback():
    result = _run_models_raising("StarError('the store is not there')")
    assert (result.returncode, result.stderr) == (2, "star models: error: the store is not there\n")
    result = _run_models_raising("RuntimeError('a bug in numpy')")
    assert result.returncode == 1
    assert result.stderr.startswith("Traceback") and result.stderr.endswith("RuntimeError: a bug in numpy\n")


def test_a_damaged_store_an_unwritable_output_and_a_bad_pickle_are_one_line_errors(tiny_store, tmp_path, capsys):
    store = tmp_path / "store"
    store.mkdir()
    (store / "manifest.json").write_text('{"format": "star-compact-1"}')
    assert main(["profile", "--store", str(store), "--model", "star-64", "--out", str(tmp_path / "p.json")]) == 2
    assert f"{store / 'manifest.json'}: no key 'created'" in capsys.readouterr().err
    (store / "manifest.json").write_bytes((tiny_store.path / "manifest.json").read_bytes())  # its tables are missing
    assert main(["profile", "--store", str(store), "--model", "star-64", "--out", str(tmp_path / "p.json")]) == 2
    assert "an incomplete or damaged store" in capsys.readouterr().err
    (tmp_path / "file").touch()
    assert main(["synth", "--out", str(tmp_path / "file" / "raw"), "--clips-per-action", "1"]) == 2
    assert capsys.readouterr().err.startswith("star synth: error: [Errno 20] Not a directory")
    assert main(["synth", "--out", str(tmp_path / "short"), "--frames", "20", "40"]) == 2
    assert "synthetic clip lengths 20-40: the shortest must be at least 25 frames" in capsys.readouterr().err
    assert not (tmp_path / "short").exists()
    (tmp_path / "new.pkl").write_bytes(b"\x80\x09rest")  # a pickle protocol no Python has
    assert main(["import", "--format", "pyskl", str(tmp_path / "new.pkl"), "--out", str(tmp_path / "s")]) == 2
    assert "new.pkl: not a readable pickle (ValueError: unsupported pickle protocol: 9)" in capsys.readouterr().err
    assert main(["train", "--store", str(store), "--benchmark", "ntu60/xsub", "--model", "star-64", "--out",
                 str(tmp_path / "run"), "--betas", "2", "3"]) == 2
    assert "betas must be in [0, 1), got (2.0, 3.0)" in capsys.readouterr().err
