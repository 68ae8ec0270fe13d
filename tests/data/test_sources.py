import json

import pytest

from helpers import write_jsonl
from rlhfkit.data import load_records, read_rows
from rlhfkit.errors import UsageError

ROWS = [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "d"}]


def test_jsonl_rows_keep_their_line_numbers(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n" + json.dumps(ROWS[1]) + "\n")  # a blank line in between
    rows = read_rows(str(path))
    assert [r.data for r in rows] == ROWS
    assert [r.number for r in rows] == [1, 3]


def test_parquet_and_saved_dataset_folders(tmp_path):
    import datasets

    dataset = datasets.Dataset.from_list(ROWS)
    dataset.to_parquet(tmp_path / "d.parquet")
    dataset.save_to_disk(tmp_path / "saved")
    datasets.DatasetDict({"train": dataset, "test": dataset.select([0])}).save_to_disk(tmp_path / "dict")
    assert load_records(str(tmp_path / "d.parquet"), "sft") == ROWS
    assert load_records(str(tmp_path / "saved"), "sft") == ROWS
    assert load_records(str(tmp_path / "dict"), "sft", split="test") == ROWS[:1]
    assert load_records(str(tmp_path / "dict") + "@test", "sft") == ROWS[:1]  # the split in the name
    with pytest.raises(UsageError, match="no split 'validation'"):
        read_rows(str(tmp_path / "dict"), split="validation")


def test_hub_name_goes_through_load_dataset(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, config=None, split=None, data_dir=None):
        if config == "subset-folder":  # not a config name: the data folder is tried next
            raise ValueError(f"BuilderConfig '{config}' not found")
        calls.append((name, config, data_dir, split))
        return datasets.Dataset.from_list(ROWS)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setattr(datasets, "get_dataset_config_names", lambda name: ["default"])
    assert load_records("someone/sft-data", "sft") == ROWS
    assert load_records("someone/sft-data@test_prefs", "sft") == ROWS
    assert load_records("someone/sft-data:default@test", "sft") == ROWS
    assert load_records("someone/sft-data:subset-folder", "sft") == ROWS
    assert calls == [
        ("someone/sft-data", None, None, "train"),
        ("someone/sft-data", None, None, "test_prefs"),
        ("someone/sft-data", "default", None, "test"),
        ("someone/sft-data", None, "subset-folder", "train"),
    ]


@pytest.mark.parametrize(
    "config, error, retried",
    [
        # not among the dataset's config names: a data folder, whatever the error's wording
        ("harmless-base", "Unknown subset 'harmless-base'", True),
        # a config name the dataset has, failing for its own reason: the error stands, no data_dir retry
        ("default", "bad value in the config's features", False),
    ],
)
def test_a_config_is_retried_as_a_data_folder_only_when_not_a_config_name(
    monkeypatch, config, error, retried
):
    import datasets

    calls = []

    def fake_load_dataset(name, config=None, split=None, data_dir=None):
        calls.append((config, data_dir))
        if data_dir is None:
            raise ValueError(error)
        return datasets.Dataset.from_list(ROWS)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setattr(datasets, "get_dataset_config_names", lambda name: ["default"])
    if retried:
        assert load_records(f"someone/data:{config}", "sft") == ROWS
        assert calls == [(config, None), (None, config)]
    else:
        with pytest.raises(UsageError, match=f"could not be loaded with datasets \\({error}\\)"):
            load_records(f"someone/data:{config}", "sft")
        assert calls == [(config, None)]


def test_a_config_is_not_retried_when_the_config_names_cannot_be_listed(monkeypatch):
    import datasets

    def offline(name):
        raise ConnectionError("offline")

    def fake_load_dataset(name, config=None, split=None, data_dir=None):
        raise ValueError(f"BuilderConfig {config!r} not found")

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setattr(datasets, "get_dataset_config_names", offline)
    with pytest.raises(UsageError, match="BuilderConfig 'sub' not found"):  # the load's own error
        read_rows("someone/data:sub")


def test_hub_name_offline_is_a_usage_error(monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    # the real load_dataset, told it is offline (the env vars are read at import, so patch the constants)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UsageError, match="nobody/no-such-dataset: not a local file and could not be loaded"):
        read_rows("nobody/no-such-dataset")


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("missing.jsonl", None, "missing.jsonl: file does not exist"),
        ("empty.jsonl", "", "empty.jsonl: no rows"),
        ("blank.jsonl", "\n\n", "blank.jsonl: no rows"),
        (
            "bad.jsonl",
            '{"prompt": "a", "completion": "b"}\n{"prompt": "a",\n',
            r"bad.jsonl row 2: not valid JSON",
        ),
        ("data.txt", "a,b\n", "unsupported file type '.txt'"),
        ("broken.parquet", "not parquet", "broken.parquet: not a readable Parquet file"),
    ],
)
def test_bad_files(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(UsageError, match=message):
        read_rows(str(path))


def test_folder_that_is_not_a_dataset(tmp_path):
    with pytest.raises(
        UsageError, match="not a dataset saved by `datasets` .* could not be loaded with datasets"
    ):
        read_rows(str(tmp_path))


def test_write_jsonl_helper_round_trips(tmp_path):
    assert load_records(write_jsonl(tmp_path / "x.jsonl", ROWS), "sft") == ROWS


def test_json_array_files_and_home_paths(tmp_path, monkeypatch):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(ROWS))
    assert load_records(str(path), "sft") == ROWS
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load_records("~/rows.json", "sft") == ROWS


def test_csv_and_tsv_files(tmp_path):
    (tmp_path / "d.csv").write_text('prompt,completion\na,b\n"c, with a comma",d\n')
    (tmp_path / "d.tsv").write_text("prompt\tcompletion\na\tb\n")
    assert load_records(str(tmp_path / "d.csv"), "sft") == [
        {"prompt": "a", "completion": "b"},
        {"prompt": "c, with a comma", "completion": "d"},
    ]
    assert load_records(str(tmp_path / "d.tsv"), "sft") == ROWS[:1]


def test_a_folder_of_data_files_with_a_subset_folder(tmp_path):
    """HH-RLHF's layout: subsets are folders of data files, named after the colon."""
    (tmp_path / "hh" / "harmless-base").mkdir(parents=True)
    write_jsonl(tmp_path / "hh" / "harmless-base" / "train.jsonl", ROWS)
    write_jsonl(tmp_path / "hh" / "harmless-base" / "test.jsonl", ROWS[:1])
    assert load_records(f"{tmp_path / 'hh'}:harmless-base@test", "sft") == ROWS[:1]
    assert load_records(f"{tmp_path / 'hh'}:harmless-base", "sft") == ROWS


def test_source_names_split_into_name_config_and_split(tmp_path):
    from rlhfkit.data.sources import parse_source

    assert parse_source("org/data") == ("org/data", None, None)
    assert parse_source("org/data@test_prefs") == ("org/data", None, "test_prefs")
    assert parse_source("org/data:sub@test") == ("org/data", "sub", "test")
    assert parse_source("org/data:data/reward") == ("org/data", "data/reward", None)  # a data folder
    assert parse_source("./saved@test") == ("./saved", None, "test")
    assert parse_source("C:\\data\\x.jsonl") == ("C:\\data\\x.jsonl", None, None)  # a drive, not a config
    existing = tmp_path / "a@b.jsonl"
    existing.write_text("{}\n")
    assert parse_source(str(existing)) == (str(existing), None, None)  # a path that exists is whole


def test_a_file_has_no_splits(tmp_path):
    data = write_jsonl(tmp_path / "prefs.jsonl", ROWS)
    with pytest.raises(UsageError, match="a file has no splits or configs"):
        read_rows(data + "@test")


def test_jsonl_with_a_bom_crlf_and_odd_whitespace_reads_the_same_lazily_and_eagerly(tmp_path):
    from rlhfkit.data.sources import open_rows

    path = tmp_path / "odd.jsonl"
    path.write_bytes(
        b"\xef\xbb\xbf" + json.dumps(ROWS[0]).encode() + b"\r\n\r\n" + json.dumps(ROWS[1]).encode() + b"\r\n"
    )
    rows = open_rows(str(path))
    assert [r.data for r in rows] == ROWS and [rows[i].data for i in range(len(rows))] == ROWS
    assert [r.number for r in rows] == [1, 3]


def test_jsonl_rows_are_read_on_access(tmp_path):
    from rlhfkit.data.sources import open_rows

    rows = open_rows(write_jsonl(tmp_path / "big.jsonl", ROWS * 500))
    assert len(rows) == 1000 and rows[999].data == ROWS[1] and rows[999].number == 1000
    assert len(rows.index[0]) * rows.index[0].itemsize == 8000  # the index: 8 bytes a row


def test_an_empty_corpus_is_refused_after_one_pass(tmp_path):
    from rlhfkit.data.schema import LazyRecords

    (tmp_path / "blank.jsonl").write_text("\n\n")
    with pytest.raises(UsageError, match="blank.jsonl: no rows"):
        LazyRecords(str(tmp_path / "blank.jsonl"), "sft")
