"""The JSONL record schema: round trips, torn lines, damaged files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers import sample_record

from specbench.errors import SpecbenchError
from specbench.records import SCHEMA_VERSION, RecordWriter, SampleRecord, read_records


def _sample(**overrides: Any) -> SampleRecord:
    return sample_record(**overrides)


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    with RecordWriter(path) as writer:
        writer.write(_sample())
        writer.write(_sample(prompt_id="p1", stats={"tree_size": 3.0}))
    records = read_records(path)
    assert [r.prompt_id for r in records] == ["p0", "p1"]
    assert records[1].stats == {"tree_size": 3.0}
    line = json.loads(path.read_text().splitlines()[0])
    assert line["record"] == "sample" and line["schema_version"] == SCHEMA_VERSION


def test_torn_last_line_is_ignored_and_cut_before_appending(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    with RecordWriter(path) as writer:
        writer.write(_sample())
    with path.open("a") as handle:
        handle.write('{"record": "sample", "run_id": "r", "meth')  # a write cut by a crash
    assert len(read_records(path)) == 1
    with RecordWriter(path) as writer:
        writer.write(_sample(prompt_id="p1"))
    assert [r.prompt_id for r in read_records(path)] == ["p0", "p1"]


def test_damage_in_the_middle_is_an_error_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text(
        _sample().model_dump_json() + "\nnot json\n" + _sample().model_dump_json() + "\n"
    )
    with pytest.raises(SpecbenchError, match=r"r\.jsonl:2"):
        read_records(path)


def test_unknown_fields_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    data = json.loads(_sample().model_dump_json())
    data["surprise"] = 1
    path.write_text(json.dumps(data) + "\n")
    with pytest.raises(SpecbenchError, match="not a specbench record"):
        read_records(path)
