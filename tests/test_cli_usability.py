"""The CLI as people tried it (issue 16 §3): flags documented with defaults, global flags after the
command, targets without a port, split datasets and hidden files, errors that name the file, `verify`,
`cancel` that reports the outcome, one exit-code scheme. Against a real server on a loopback port."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from munet_client import MunetClient
from munet_client.cli import main as cli
from munet_client.cli import parser
from munet_client.client import normalize_target
from munet_client.images import ImageFolder
from tests.helpers import image_folder, make_app


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_vit):
    tmp = tmp_path_factory.mktemp("cli")
    app = make_app(tmp / "store", tiny_vit)
    folder, test = image_folder(tmp, classes=3, per_class=10)
    target = f"127.0.0.1:{app.port}"
    assert cli(["--target", target, "add-task", "digits", str(folder), "--generations", "0", "-q"]) == 0
    yield app, target, tmp, folder, test
    app.stop(0)


def test_every_option_says_what_it_does_and_its_default():
    p = parser()
    subs = next(a for a in p._actions if a.dest == "command").choices
    for name, sp in [("munet", p), *subs.items()]:
        for action in sp._actions:
            if action.dest in ("help", "version"):
                continue
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
    text = p.format_help()
    assert "(default: 127.0.0.1:50051)" in text and "(default: 60.0)" in text and "exit codes:" in text


def test_every_server_flag_says_what_it_does():
    from munet_server.config import parser as server_parser

    p = server_parser()
    missing = [a.option_strings for a in p._actions if not a.help and a.dest != "help"]
    assert not missing, missing
    assert "(default: 50051)" in p.format_help()


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        cli(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("munet ")


def test_global_flags_after_the_command(served, capsys):
    _, target, *_ = served
    assert cli(["tasks", "--json", "--target", target]) == 0
    assert [t["name"] for t in json.loads(capsys.readouterr().out)] == ["digits"]
    # Given before the command they still work, and a later one wins.
    assert cli(["--target", "127.0.0.1:1", "tasks", "--target", target, "--json"]) == 0
    capsys.readouterr()


def test_targets_get_the_default_port_and_bad_ports_are_refused(capsys):
    assert normalize_target("localhost") == "localhost:50051"
    assert normalize_target("[::1]") == "[::1]:50051" and normalize_target("::1") == "[::1]:50051"
    assert normalize_target("unix:/run/munet.sock") == "unix:/run/munet.sock"
    assert cli(["--target", "localhost:99999", "tasks"]) == 2
    assert "'99999'" in capsys.readouterr().err


def test_restore_without_an_archive_says_what_to_give(capsys):
    assert cli(["restore"]) == 2
    out = capsys.readouterr().err
    assert "give the snapshot archive" in out and "None" not in out
    assert cli(["restore", "no-such.tar"]) == 2
    assert "no-such.tar does not exist" in capsys.readouterr().err


def test_split_datasets_hidden_files_and_bad_images(served, tmp_path, capsys):
    _, target, _, folder, _ = served
    data = tmp_path / "dataset"
    shutil.copytree(folder, data / "train")
    shutil.copytree(folder, data / "test")
    (data / "train" / "0" / ".DS_Store").write_bytes(b"\0\1")
    (data / "train" / "__MACOSX").mkdir()
    (data / "train" / "__MACOSX" / "._x.png").write_bytes(b"junk")
    (data / "train" / ".hidden").mkdir()
    tree = ImageFolder.scan(data)
    assert tree.split == "train" and tree.class_names == sorted(p.name for p in folder.iterdir())
    assert all(not p.name.startswith(".") and "__MACOSX" not in p.parts for p, _ in tree.files)
    assert len(tree.files) == len(ImageFolder.scan(folder).files)
    # A split dataset without train/ is refused with a hint, not learned as "test vs val".
    only = tmp_path / "splits"
    shutil.copytree(folder, only / "test")
    shutil.copytree(folder, only / "val")
    with pytest.raises(ValueError, match="splits test, val"):
        ImageFolder.scan(only)
    # The server's "example N" becomes the file a person can open.
    bad = data / "train" / sorted(tree.class_names)[1] / "zz-broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert cli(["--target", target, "add-task", "broken", str(data), "--no-wait"]) == 1
    err = capsys.readouterr().err
    assert "learning from" in err and "zz-broken.png" in err and "INVALID_ARGUMENT" in err


def test_verify_reports_bit_identical_outputs(served, capsys):
    _, target, *_ = served
    assert cli(["--target", target, "verify"]) == 0
    assert "bit-identical" in capsys.readouterr().out
    assert cli(["--target", target, "--json", "verify", "digits"]) == 0
    (r,) = json.loads(capsys.readouterr().out)
    assert r["identical"] and r["digest"] == r["golden_digest"] and r["probe_images"] > 0
    assert cli(["--target", target, "verify", "nope"]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err


def test_cancel_prints_the_outcome(served, capsys):
    _, target, _, folder, _ = served
    with MunetClient(target) as c:
        op = c.add_task_from_folder("slow", folder, budget={"seconds": 300}, seed=0)
    assert cli(["--target", target, "cancel", op.name]) == 0
    out = capsys.readouterr().out
    assert "CANCELLED" in out and "RUNNING" not in out


def test_predict_a_folder_to_csv_with_one_bad_image(served, tmp_path, capsys):
    _, target, _, folder, _ = served
    photos = tmp_path / "photos"
    shutil.copytree(folder, photos)
    (photos / "nested").mkdir()
    (photos / "nested" / "bad.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (photos / ".DS_Store").write_bytes(b"junk")
    n = len(ImageFolder.scan(folder).files)
    out = tmp_path / "out.csv"
    assert cli(["--target", target, "predict", "digits", str(photos), "--csv", str(out), "--top-k", "2"]) == 1
    captured = capsys.readouterr()
    assert f"{n} of {n + 1} images classified" in captured.out and "bad.jpg" in captured.err
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == n + 1 and {r["image"] for r in rows} >= {str(photos / "nested" / "bad.jpg")}
    good = [r for r in rows if not r["error"]]
    assert len(good) == n and all(r["label"] and r["label_2"] and float(r["probability"]) > 0 for r in good)
    (bad,) = [r for r in rows if r["error"]]
    assert bad["image"].endswith("bad.jpg") and not bad["label"]


def test_eval_a_labelled_folder(served, tmp_path, capsys):
    from munet_server.data import offline

    _, target, _, _, test = served
    data = offline.write_image_folder(test, tmp_path / "test")
    plot = tmp_path / "cm.png"
    assert cli(["--target", target, "eval", "digits", str(data), "--plot", str(plot)]) == 0
    text = capsys.readouterr().out
    assert "accuracy" in text and "confusion matrix" in text and "precision" in text
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli(["--target", target, "--json", "eval", "digits", str(data)]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["images"] == len(test.labels) == sum(map(sum, r["confusion"]))
    correct = sum(r["confusion"][i][i] for i in range(len(r["confusion"])))
    assert r["accuracy"] == pytest.approx(correct / r["images"]) and r["accuracy"] > 0.5  # 3 classes
    # Class folders the task does not know are named, with the task's classes.
    (data / "cat").mkdir()
    shutil.copy(next((data / test.class_names[0]).iterdir()), data / "cat" / "x.png")
    assert cli(["--target", target, "eval", "digits", str(data)]) == 2
    assert "does not know: cat" in capsys.readouterr().err


def test_generations_zero_skipped_files_and_plain_progress_when_piped(served, tmp_path, capsys):
    """`--generations 0` is the probe only (it was dropped as falsy); files that are not images are
    named; progress piped to a file is whole lines, not a bar's carriage returns (issue 31 §10-12)."""
    app, target, _, folder, _ = served
    tree = tmp_path / "tree"
    shutil.copytree(folder, tree)
    (tree / "0" / "notes.txt").write_text("not an image")
    assert cli(["--target", target, "add-task", "probe-only", str(tree), "--generations", "0"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "upload:" in err and "learn:" in err
    assert "skipping 1 files that are not images (0/notes.txt)" in err
    metrics = app.ref.system.entry("probe-only").record.metrics
    assert metrics["generations"] == 0 and metrics["kind"] == "probe"
    assert cli(["-q", "--target", target, "tasks"]) == 0 and cli(["--target", target, "tasks", "-q"]) == 0
    capsys.readouterr()
