"""Tests of gpt2_scratch.files: folder swaps, their leftovers, file modes, hard-linked folders."""

from __future__ import annotations

import codecs
import os
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from gpt2_scratch.files import (
    MARKER,
    FolderRefused,
    atomic_folder,
    check_replaceable,
    folder_kind,
    link_folder,
    read_json,
    read_jsonl,
    remove_stray_temporaries,
)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_atomic_folder_gives_files_the_umask_modes(tmp_path, umask_022):
    """mkstemp, mkdtemp and safetensors create 0600/0700: the swapped-in folder must not stay private."""
    with atomic_folder(tmp_path / "ckpt") as tmp:
        save_file({"w": torch.zeros(2)}, str(tmp / "model.safetensors"))
        (tmp / "sub").mkdir(mode=0o700)
        (tmp / "sub" / "notes.txt").write_text("x")
        os.chmod(tmp / "sub" / "notes.txt", 0o600)
    assert mode(tmp_path / "ckpt") == 0o755
    assert mode(tmp_path / "ckpt" / "sub") == 0o755
    assert mode(tmp_path / "ckpt" / "model.safetensors") == 0o644
    assert mode(tmp_path / "ckpt" / "sub" / "notes.txt") == 0o644


def test_remove_stray_temporaries(tmp_path):
    # What kills during atomic_write / atomic_folder leave behind.
    (tmp_path / ".train_state.ab12cd.tmp").mkdir()
    (tmp_path / ".train_state.ab12cd.tmp" / "model.safetensors").write_bytes(b"x" * 1000)
    (tmp_path / ".metrics.jsonl.q9.tmp").write_text("{}")
    (tmp_path / "final").mkdir()
    (tmp_path / ".final.old").mkdir()  # killed after both renames: final/ is the new one
    (tmp_path / ".best.old").mkdir()  # killed between the renames: best/ is missing, this is it
    (tmp_path / ".best.old" / "config.json").write_text("{}")
    # Not leftovers: kept.
    for name in ("run.json", ".hidden", ".notes.tmp", "x.tmp", "final.old"):
        (tmp_path / name).write_text("keep")

    removed = remove_stray_temporaries(tmp_path)
    assert sorted(removed) == [".final.old", ".metrics.jsonl.q9.tmp", ".train_state.ab12cd.tmp"]
    assert (tmp_path / "best" / "config.json").read_text() == "{}"  # restored, not removed
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".hidden",
        ".notes.tmp",
        "best",
        "final",
        "final.old",
        "run.json",
        "x.tmp",
    ]
    assert remove_stray_temporaries(tmp_path) == []
    assert remove_stray_temporaries(tmp_path / "missing") == []


def test_link_folder_shares_the_files(tmp_path):
    src = tmp_path / "final"
    src.mkdir()
    (src / "model.safetensors").write_bytes(b"weights")
    (src / "config.json").write_text("{}")
    with atomic_folder(tmp_path / "best", "checkpoint") as tmp:
        (tmp / "old.bin").write_text("previous best")

    link_folder(src, tmp_path / "best", "checkpoint")
    assert sorted(p.name for p in (tmp_path / "best").iterdir()) == [MARKER, "config.json", "model.safetensors"]
    for name in ("model.safetensors", "config.json"):
        assert os.stat(tmp_path / "best" / name).st_ino == os.stat(src / name).st_ino
    assert not list(tmp_path.glob(".best*"))


def test_read_jsonl_accepts_a_utf8_bom(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(codecs.BOM_UTF8 + b'{"a": 1}\n{"a": 2}\n')
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]


def test_read_json_names_the_file_it_cannot_read(tmp_path):
    good, bad, binary = tmp_path / "good.json", tmp_path / "bad.json", tmp_path / "binary.json"
    good.write_text('{"a": [1, "é"]}', encoding="utf-8")
    bad.write_text('{"a": ', encoding="utf-8")
    binary.write_bytes(b'{"a": "\xff"}')
    assert read_json(good) == {"a": [1, "é"]}
    with pytest.raises(ValueError, match=rf"^{bad} is not valid JSON \(Expecting value: line 1 column 7"):
        read_json(bad)
    with pytest.raises(ValueError, match=rf"^{binary} is not valid JSON \('utf-8' codec can't decode byte 0xff"):
        read_json(binary)


def test_atomic_folder_replaces_only_a_folder_of_its_own_kind(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_folder(target, "checkpoint") as tmp:
        (tmp / "a.txt").write_text("1")
    assert folder_kind(target) == "checkpoint"
    with atomic_folder(target, "checkpoint") as tmp:
        (tmp / "a.txt").write_text("2")
    assert (target / "a.txt").read_text() == "2"
    with pytest.raises(FolderRefused, match=f"refusing to replace {target}: it holds a checkpoint, not an export"):
        with atomic_folder(target, "export"):
            pass
    assert (target / "a.txt").read_text() == "2"


def test_atomic_folder_never_replaces_a_folder_it_did_not_write(tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    with pytest.raises(FolderRefused, match=f"^refusing to replace {user}: it holds files this project did not write"):
        with atomic_folder(user, "export") as tmp:
            (tmp / "x").write_text("x")
    assert [p.name for p in user.iterdir()] == ["notes.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["user"]  # no temporary left either
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text("{}")
    with pytest.raises(FolderRefused, match="it is a run folder"):
        check_replaceable(run, "export")
    empty = tmp_path / "empty"
    empty.mkdir()
    check_replaceable(empty, "export")  # nothing in it to lose
    check_replaceable(tmp_path / "new", "export")
    with pytest.raises(FolderRefused, match="it is not a folder"):
        check_replaceable(user / "notes.txt", "export")


def test_atomic_folder_refuses_a_checkout_the_home_folder_and_the_root(tmp_path, monkeypatch):
    checkout = tmp_path / "clone"
    (checkout / ".git").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / ".bashrc").write_text("")
    inside = tmp_path / "work" / "sub"
    inside.mkdir(parents=True)
    monkeypatch.chdir(inside)
    for folder, why in (
        (checkout, "it is a git checkout"),
        (tmp_path / "home", "it is the home folder"),
        (Path("/"), "it is the filesystem root"),
        (tmp_path / "work", "it holds the current folder or the project"),
        (Path(__file__).resolve().parents[1], "it is a git checkout|it holds the current folder or the project"),
    ):
        with pytest.raises(FolderRefused, match=why):
            check_replaceable(folder, "export", ours=lambda _: True)  # even a folder that looks like ours
