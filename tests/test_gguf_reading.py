"""``open_gguf``: the gguf package's reader over a plain array, read once per file."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from gguf import GGUFReader

from autotune.model_info import inspect_model, open_gguf


def test_it_reads_what_the_gguf_package_reads(tiny_model: Path):
    ours, theirs = open_gguf(tiny_model), GGUFReader(tiny_model, "r")
    assert list(ours.fields) == list(theirs.fields)
    for key, field in theirs.fields.items():
        mine = ours.fields[key]
        assert (mine.types, mine.data, mine.offset) == (field.types, field.data, field.offset), key
        assert all(np.array_equal(mine.parts[i], field.parts[i]) for i in field.data), key
    assert len(ours.tensors) == len(theirs.tensors)
    for mine, tensor in zip(ours.tensors, theirs.tensors):
        assert (mine.name, mine.tensor_type, mine.data_offset) == (tensor.name, tensor.tensor_type, tensor.data_offset)
        assert np.array_equal(mine.data, tensor.data)


def test_a_file_is_read_once_until_it_changes(tiny_model: Path, tmp_path: Path):
    copy = tmp_path / "copy.gguf"
    shutil.copy(tiny_model, copy)
    first = open_gguf(copy)
    assert open_gguf(copy) is first
    assert inspect_model(copy).fingerprint == inspect_model(tiny_model).fingerprint
    with copy.open("ab") as handle:  # a new size: another file now
        handle.write(b"\0" * 64)
    assert open_gguf(copy) is not first
