"""Issue 19, items 22 and 23: CI keeps the user's environment; the README's step count comes from the code."""

from __future__ import annotations

import re
from pathlib import Path

from gpt2_scratch.data.batches import LengthGroupedBatchSampler
from gpt2_scratch.data.records import Record, split_records
from gpt2_scratch.train.config import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
REFERENCE_RECORDS = 1100  # the default dataset, LLMs-from-scratch's instruction-data.json


def test_ci_has_its_own_environment_and_never_touches_dot_venv():
    """Item 22: `bash .ci/run` after the README's main job left no .venv: CI now uses .ci-venv."""
    script = (ROOT / ".ci" / "run").read_text()
    commands = [line.strip() for line in script.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert not [c for c in commands if re.search(r"(^|[\s/])\.venv\b", c)], "the CI script names the user's .venv"
    assert "rm -rf .ci-venv" in commands and "python3 -m venv .ci-venv" in commands
    assert ". .ci-venv/bin/activate" in commands
    assert ".ci-venv/" in (ROOT / ".gitignore").read_text().splitlines()
    [exclude] = re.findall(r"^extend-exclude = \[(.*)\]$", (ROOT / "pyproject.toml").read_text(), re.M)
    assert '".ci-venv"' in exclude.split(", ")  # ruff (run by .ci/run) does not lint CI's environment
    readme = (ROOT / "README.md").read_text()
    assert "**`.ci-venv`**" in readme and "your `.venv` from the main job is never touched" in readme


def test_the_readme_step_count_is_the_codes():
    """Item 23: the default run's optimizer steps, as the trainer counts them (full batches only, every epoch)."""
    records = [Record(i, f"instruction {i}", "", f"output {i}") for i in range(REFERENCE_RECORDS)]
    config = TrainConfig()
    train = split_records(records, shuffle=config.shuffle_split, seed=config.seed).train
    sampler = LengthGroupedBatchSampler(
        [1] * len(train), config.batch_size, shuffle=True, seed=config.seed, drop_last=True
    )
    steps = config.epochs * len(sampler)
    assert (len(train), len(sampler), steps) == (935, 116, 232)
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert f"the default run is {steps} steps ({config.epochs} epochs of {len(sampler)} full batches" in readme


def test_the_readme_says_how_to_get_gpt2_for_offline_use():
    readme = (ROOT / "README.md").read_text()
    assert "hf download openai-community/gpt2 model.safetensors config.json --local-dir gpt2-124M" in readme
    assert "python finetune.py --base ./gpt2-124M" in readme


# A path to the data folder our machines keep beside the checkout: "../shared", "/work/shared",
# `... / "shared" / "data"` (any quote), or a literal "shared/data".
SHARED_FOLDER = re.compile(r"""\.\./shared\b|/work/shared\b|/\s*["']shared["']|["']shared/data""")


def test_the_shared_folder_pattern_catches_the_ways_a_test_could_name_it():
    assert SHARED_FOLDER.search('SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"')
    assert SHARED_FOLDER.search("load_records('../shared/data/instruction-data.json')")
    assert SHARED_FOLDER.search('Path("/work/shared/data/x.json")')
    assert not SHARED_FOLDER.search('assert message == "Compared on 3 shared records of a (4), b (4)."')


def test_no_test_reads_the_data_folder_beside_the_checkout():
    """A user's clone has nothing beside it: every test writes its own fixture data."""
    this = Path(__file__).resolve()
    offenders = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in sorted((ROOT / "tests").rglob("*.py"))
        if path.resolve() != this
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if SHARED_FOLDER.search(line)
    ]
    assert len(list((ROOT / "tests").rglob("test_*.py"))) > 50  # the scan saw the suite
    assert offenders == []


def _docs() -> dict[str, str]:
    return {p.relative_to(ROOT).as_posix(): p.read_text() for p in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]}


def test_the_readme_fits_a_first_screen_and_keeps_the_space_header():
    readme = (ROOT / "README.md").read_text()
    header, body = readme.split("\n---\n", 1)
    assert header.startswith("---\n")
    assert {"sdk: gradio", "app_file: app.py", "license: apache-2.0"} <= set(header.splitlines())
    assert len(readme.splitlines()) <= 90 and len(readme) < 6000  # it was 520 lines, 34 kB
    # The offline recipe comes right after the first command, before the tests and the map.
    first_block_end = body.index("```", body.index("```bash") + 3)
    offline = body.index("**Offline?**")
    assert body[first_block_end:offline].count("\n\n") <= 2  # the block's end, one short paragraph
    assert offline < body.index("bash .ci/run") < body.index("## What is here")
    assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in body
    for doc in ("docs/usage.md", "docs/benchmarks.md", "docs/design.md"):
        assert f"]({doc})" in body


def test_docs_point_at_what_exists_and_never_at_the_shared_folder():
    for name, text in _docs().items():
        assert "../shared" not in text, name
        folder = (ROOT / name).parent
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if not target.startswith(("http://", "https://")):
                assert (folder / target).exists(), f"{name} links to {target}, which does not exist"
        for path in re.findall(r"`(tests/[\w/]+\.py)`", text):
            assert (ROOT / path).is_file(), f"{name} names {path}, which does not exist"
