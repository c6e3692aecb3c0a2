"""Content hashes: sha256 of each file's bytes, in order; an unreadable file gets the hash that matches nothing."""

from __future__ import annotations

import hashlib

from pipeline.extraction.hashing import UNREADABLE, file_sha256, hash_files


def test_hashes_are_the_sha256_of_the_bytes_in_order(tmp_path):
    paths = []
    for index, data in enumerate([b"one", b"two", b"x" * (3 << 20)]):
        paths.append(tmp_path / f"{index}.bin")
        paths[-1].write_bytes(data)
    expected = [hashlib.sha256(path.read_bytes()).hexdigest() for path in paths]
    assert hash_files(paths, workers=2, show_progress=False) == expected
    assert file_sha256(paths[2]) == expected[2]


def test_an_unreadable_file_hashes_to_the_empty_marker(tmp_path):
    (tmp_path / "a").write_bytes(b"a")
    assert hash_files([tmp_path / "a", tmp_path / "missing"], show_progress=False)[1] == UNREADABLE
