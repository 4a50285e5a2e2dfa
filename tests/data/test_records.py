"""Tests for gpt2_scratch.data.records: loading and validation, URLs and the Hub, writing, splitting."""

from __future__ import annotations

import codecs
import functools
import hashlib
import http.server
import json
import random
import threading

import pytest

from gpt2_scratch.data import records as data
from gpt2_scratch.data.records import (
    Record,
    load_records,
    read_records,
    source_kind,
    source_sha256,
    split_records,
    write_records,
)
from tests.fixtures.records import ENTRIES


def write_json(path, obj) -> str:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return str(path)


# ---------------------------------------------------------------------------------------------
# Loading


def test_load_json_list(tmp_path):
    path = write_json(tmp_path / "d.json", ENTRIES)
    records = load_records(path)
    assert records == [
        Record(0, ENTRIES[0]["instruction"], "freind --> friend", ENTRIES[0]["output"]),
        Record(1, "Say hi.", "", "Hi!"),
        Record(2, "Name a color.", "", "Blue."),
    ]
    assert source_sha256(path) == hashlib.sha256((tmp_path / "d.json").read_bytes()).hexdigest()


def test_load_jsonl_skips_blank_lines_and_ignores_extra_fields(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [json.dumps(e) for e in ENTRIES]
    path.write_text(rows[0] + "\n\n" + rows[1] + "\n" + json.dumps({**ENTRIES[2], "text": "extra"}) + "\n")
    assert load_records(str(path)) == load_records(write_json(tmp_path / "d.json", ENTRIES))
    assert source_sha256(str(path)) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_null_input_means_no_input(tmp_path):
    path = write_json(tmp_path / "d.json", [{"instruction": "a", "input": None, "output": "b"}])
    assert load_records(path) == [Record(0, "a", "", "b")]


@pytest.mark.parametrize(
    "content, message",
    [
        ("[]", "{path}: the dataset has no entries"),
        (
            '{"instruction": "a", "output": "b"}',
            "{path}: expected a JSON array of records at the top level, got an object",
        ),
        (
            '[{"instruction": "a", "output": "b"},\n  {"instruction": "a" "output": "b"}]',
            "{path}: invalid JSON at line 2, column 23 (Expecting ',' delimiter)",
        ),
        ('[{"instruction": "a", "output": "b"}, "text"]', "{path}: entry 1 is a string, expected an object"),
        ('[{"instruction": "a", "output": "b"}, {"output": "b"}]', "{path}: entry 1: missing field 'instruction'"),
        (
            '[{"instruction": "a", "output": "b"}, {"instruction": "a", "input": ""}]',
            "{path}: entry 1: missing field 'output'",
        ),
        (
            '[{"instruction": "a", "output": "b"}, {"instruction": "a", "output": 3}]',
            "{path}: entry 1: field 'output' must be a string, got a number",
        ),
        (
            '[{"instruction": ["a"], "output": "b"}]',
            "{path}: entry 0: field 'instruction' must be a string, got an array",
        ),
        (
            '[{"instruction": "a", "input": false, "output": "b"}]',
            "{path}: entry 0: field 'input' must be a string, got a boolean",
        ),
        ('[{"instruction": "a", "output": null}]', "{path}: entry 0: field 'output' must be a string, got null"),
    ],
)
def test_bad_json_is_a_one_line_error_naming_file_and_entry(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError) as e:
        load_records(str(path))
    assert str(e.value) == message.format(path=path)
    assert "\n" not in str(e.value)


def test_bad_jsonl_names_line_and_entry(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n\n{"instruction": "a", "output": \n')
    with pytest.raises(ValueError, match=r"^.*bad\.jsonl: line 3 is not valid JSON \(Expecting value\)$"):
        load_records(str(path))
    path.write_text('{"instruction": "a", "output": "b"}\n\n[1, 2]\n')
    with pytest.raises(ValueError) as e:
        load_records(str(path))
    assert str(e.value) == f"{path}: entry 1 is an array, expected an object"
    path.write_text("\n\n")
    with pytest.raises(ValueError, match="has no entries"):
        load_records(str(path))


def test_not_utf8_is_a_one_line_error(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes('[{"instruction": "caf\u00e9", "output": "b"}]'.encode("latin-1"))
    with pytest.raises(ValueError) as e:
        load_records(str(path))
    assert str(e.value) == f"{path}: not UTF-8 text (byte 21)"


def test_a_utf8_bom_is_accepted(tmp_path):
    """Windows editors save UTF-8 with a byte-order mark; json.loads refuses it ("Unexpected UTF-8 BOM")."""
    bom = codecs.BOM_UTF8
    (tmp_path / "bom.json").write_bytes(bom + json.dumps(ENTRIES).encode())
    (tmp_path / "bom.jsonl").write_bytes(bom + "\n".join(json.dumps(e) for e in ENTRIES).encode())
    expected = load_records(write_json(tmp_path / "plain.json", ENTRIES))
    assert load_records(str(tmp_path / "bom.json")) == expected
    assert load_records(str(tmp_path / "bom.jsonl")) == expected


def test_a_csv_file_is_named_as_csv(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("instruction,input,output\nSay hi.,,Hi!\n")
    with pytest.raises(ValueError) as e:
        load_records(str(path))
    assert str(e.value) == (
        f"{path}: a CSV file is not supported "
        "(--dataset takes a .json file (a list of records) or a .jsonl file (one record a line))"
    )


@pytest.mark.parametrize("suffix, where", [(".json", ""), (".jsonl", "line 1 is ")])
def test_deeply_nested_json_is_a_one_line_error(tmp_path, suffix, where):
    path = tmp_path / f"deep{suffix}"
    path.write_text("[" * 100_000 + "]" * 100_000 + "\n")  # a RecursionError inside json.loads
    with pytest.raises(ValueError) as e:
        load_records(str(path))
    assert str(e.value).startswith(f"{path}: {where}JSON nested too deeply (over ~1000 levels of lists/objects)")
    assert "\n" not in str(e.value)


def test_missing_file_and_folder(tmp_path):
    missing = str(tmp_path / "nope.json")
    with pytest.raises(FileNotFoundError) as e:
        load_records(missing)
    assert str(e.value) == f"dataset file not found: {missing}"
    # A relative name ending in .json is a file too, never a Hub dataset id.
    assert source_kind("data/nope.jsonl") == "file"
    with pytest.raises(FileNotFoundError):
        source_sha256(missing)
    with pytest.raises(ValueError, match="is not a file"):
        load_records(str(tmp_path))


def test_source_kind():
    assert source_kind(data.DEFAULT_DATASET_URL) == "url"
    assert source_kind("http://example.com/d.jsonl") == "url"
    assert source_kind("./instruction-data") == "file"
    assert source_kind("~/d.json") == "file"
    assert source_kind("yahma/alpaca-cleaned") == "hub"
    assert source_kind("tatsu-lab/alpaca") == "hub"


def test_hub_dataset_goes_through_datasets(monkeypatch):
    import datasets  # a requirement of the project: a missing package fails this test rather than skipping it

    calls = []

    def fake_load_dataset(name, split):
        calls.append((name, split))
        # No "input" column at all: every record has an empty input. Extra columns are ignored.
        return datasets.Dataset.from_list(
            [
                {"instruction": "Add 2 and 3.", "output": "5", "text": "x"},
                {"instruction": "Say hi.", "output": "Hi!", "text": "y"},
            ]
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load_records("someone/tiny-alpaca") == [Record(0, "Add 2 and 3.", "", "5"), Record(1, "Say hi.", "", "Hi!")]
    assert calls == [("someone/tiny-alpaca", "train")]
    assert source_sha256("someone/tiny-alpaca") is None
    assert calls == [("someone/tiny-alpaca", "train")]  # no hash means no need to load it

    monkeypatch.setattr(
        datasets, "load_dataset", lambda name, split: datasets.Dataset.from_list([{"instruction": "a"}])
    )
    with pytest.raises(ValueError) as e:
        load_records("someone/no-output")
    assert str(e.value) == "Hugging Face dataset someone/no-output: no 'output' column (columns: instruction)"

    monkeypatch.setattr(
        datasets,
        "load_dataset",
        lambda name, split: datasets.Dataset.from_list([{"instruction": "a", "input": 7, "output": "b"}]),
    )
    with pytest.raises(ValueError) as e:
        load_records("someone/bad-input")
    assert (
        str(e.value) == "Hugging Face dataset someone/bad-input: entry 0: field 'input' must be a string, got a number"
    )

    def not_found(name, split):
        raise FileNotFoundError(f"Dataset '{name}' doesn't exist on the Hub\nsecond line")

    monkeypatch.setattr(datasets, "load_dataset", not_found)
    with pytest.raises(ValueError) as e:
        load_records("someone/missing")
    assert str(e.value) == (
        "cannot load 'someone/missing' as a Hugging Face dataset (FileNotFoundError: Dataset 'someone/missing' "
        "doesn't exist on the Hub); pass a local .json/.jsonl file or a URL with --dataset"
    )


@pytest.fixture
def http_server(tmp_path):
    """A local HTTP server (no internet needed) serving tmp_path/www, with a log of requested paths."""
    root = tmp_path / "www"
    root.mkdir()
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            return super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}", requests
    server.shutdown()
    server.server_close()


def test_url_is_downloaded_once_and_cached(tmp_path, monkeypatch, http_server):
    root, base, requests = http_server
    monkeypatch.setenv("GPT2_SCRATCH_CACHE", str(tmp_path / "cache"))
    write_json(root / "instruction-data.json", ENTRIES)
    url = f"{base}/instruction-data.json"
    assert source_kind(url) == "url"

    assert load_records(url) == load_records(str(root / "instruction-data.json"))
    cached = list((tmp_path / "cache" / "datasets").iterdir())
    assert [p.name for p in cached] == [f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-instruction-data.json"]
    assert cached[0].read_bytes() == (root / "instruction-data.json").read_bytes()
    assert source_sha256(url) == hashlib.sha256(cached[0].read_bytes()).hexdigest()

    (root / "instruction-data.json").unlink()  # served no more: the cache answers
    assert len(load_records(url)) == 3
    assert requests == ["/instruction-data.json"]

    # A .jsonl URL is parsed as JSON lines.
    (root / "d.jsonl").write_text("".join(json.dumps(e) + "\n" for e in ENTRIES))
    assert len(load_records(f"{base}/d.jsonl")) == 3


def test_bad_download_is_not_kept_in_the_cache(tmp_path, monkeypatch, http_server):
    root, base, requests = http_server
    monkeypatch.setenv("GPT2_SCRATCH_CACHE", str(tmp_path / "cache"))
    (root / "broken.json").write_text("<html>not json</html>")
    with pytest.raises(ValueError) as e:
        load_records(f"{base}/broken.json")
    assert str(e.value).endswith(
        f"broken.json: invalid JSON at line 1, column 1 (Expecting value) "
        f"(downloaded from {base}/broken.json; removed from the cache)"
    )
    assert list((tmp_path / "cache" / "datasets").iterdir()) == []
    write_json(root / "broken.json", ENTRIES)  # fixed upstream: the next call downloads again
    assert len(load_records(f"{base}/broken.json")) == 3
    assert requests == ["/broken.json", "/broken.json"]


def test_download_failure_is_one_line_and_suggests_a_local_file(tmp_path, monkeypatch, http_server):
    _, base, _ = http_server
    monkeypatch.setenv("GPT2_SCRATCH_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ConnectionError) as e:
        load_records(f"{base}/missing.json")
    message = str(e.value)
    assert message.startswith(f"cannot download {base}/missing.json (")
    assert message.endswith("pass the local file with --dataset PATH")
    assert "\n" not in message
    assert (
        message == f"cannot download {base}/missing.json (HTTP 404 File not found); "
        "download it yourself and pass the local file with --dataset PATH"
    )
    cache = tmp_path / "cache" / "datasets"
    assert not cache.exists() or not any(cache.iterdir())


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("GPT2_SCRATCH_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert data.cache_dir() == tmp_path / ".cache" / "gpt2_scratch" / "datasets"
    monkeypatch.setenv("GPT2_SCRATCH_CACHE", str(tmp_path / "c"))
    assert data.cache_dir() == tmp_path / "c" / "datasets"


def test_write_read_records_round_trip(tmp_path):
    records = [
        Record(7, "Translate: \u00e9t\u00e9", "line1\nline2", 'He said "hi" <|endoftext|>'),
        Record(3, "b", "", "c"),
    ]
    path = tmp_path / "run" / "data" / "test.jsonl"
    write_records(path, records)
    assert read_records(path) == records
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert first == {
        "id": 7,
        "instruction": "Translate: \u00e9t\u00e9",
        "input": "line1\nline2",
        "output": 'He said "hi" <|endoftext|>',
    }
    assert [p.name for p in path.parent.iterdir()] == ["test.jsonl"]  # no temporary file left behind
    assert Record.from_dict(records[0].to_dict()) == records[0]


def test_read_records_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="records file not found"):
        read_records(tmp_path / "nope.jsonl")
    path = tmp_path / "val.jsonl"
    path.write_text('{"id": 0, "instruction": "a", "input": "", "output": "b"}\n{"instruction": "a", "output": "b"}\n')
    with pytest.raises(ValueError) as e:
        read_records(path)
    assert str(e.value) == f"{path}: entry 1: field 'id' must be an integer, got None"


# ---------------------------------------------------------------------------------------------
# Splitting


def synthetic_records(n):
    return [Record(i, f"instruction {i}", "", f"output {i}") for i in range(n)]


def test_default_split_is_the_reference_unshuffled_split():
    records = synthetic_records(1100)
    split = split_records(records)
    assert split.sizes() == {"train": 935, "test": 110, "val": 55}
    assert [r.id for r in split.train] == list(range(0, 935))
    assert [r.id for r in split.test] == list(range(935, 1045))
    assert [r.id for r in split.val] == list(range(1045, 1100))


def test_shuffled_split_is_seeded():
    records = synthetic_records(1100)
    a = split_records(records, shuffle=True, seed=1)
    assert split_records(records, shuffle=True, seed=1) == a
    assert split_records(records, shuffle=True, seed=2) != a
    assert a.sizes() == {"train": 935, "test": 110, "val": 55}
    ids = [r.id for r in a.train + a.test + a.val]
    assert sorted(ids) == list(range(1100)) and ids != list(range(1100))
    shuffled = list(records)
    random.Random(1).shuffle(shuffled)
    assert a.train == shuffled[:935]
    assert [r.id for r in records] == list(range(1100))  # the input list is not shuffled in place


def test_split_rounding_and_errors():
    assert split_records(synthetic_records(10)).sizes() == {"train": 8, "test": 1, "val": 1}
    assert split_records(synthetic_records(10), train_frac=0.9, test_frac=0.1).sizes() == {
        "train": 9,
        "test": 1,
        "val": 0,
    }
    with pytest.raises(ValueError, match="5 records are too few to split: the test part would be empty"):
        split_records(synthetic_records(5))
    with pytest.raises(ValueError, match="invalid split fractions"):
        split_records(synthetic_records(10), train_frac=0.9, test_frac=0.2)
