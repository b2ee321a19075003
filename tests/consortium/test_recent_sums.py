"""The aggregator keeps the last released sums in memory: every bank of a round is answered the
same bytes, read from disk and checked once; a sum it does not keep is read and checked as before."""

from __future__ import annotations

from pathlib import Path

import pytest

from consortium.extensions import RecentSums
from consortium.storage.blobs import BlobCorruptError, BlobMissingError, BlobStore


def _path(store: BlobStore, digest: str) -> Path:
    return store.root / digest[:2] / digest


def test_a_sum_read_once_is_answered_again_without_the_disk(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    digest = store.put(b"the released sum")
    sums = RecentSums(store)
    assert sums.get(digest) == b"the released sum"
    _path(store, digest).unlink()  # a second read from disk would fail now
    assert sums.get(digest) == b"the released sum"


def test_a_sum_not_kept_is_checked_against_its_name(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    digest = store.put(b"the released sum")
    _path(store, digest).write_bytes(b"the released sun")  # damaged on disk
    with pytest.raises(BlobCorruptError):
        RecentSums(store).get(digest)


def test_only_the_last_sums_are_kept_and_never_an_oversized_one(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    sums = RecentSums(store, entries=2, max_bytes=10)
    digests = [store.put(data) for data in (b"round one", b"round two", b"round 3", b"a sum of many bytes")]
    for digest in digests:
        sums.keep(digest, store.get(digest))
    for digest in digests:
        _path(store, digest).unlink()
    with pytest.raises(BlobMissingError):
        sums.get(digests[0])  # the oldest made room
    assert sums.get(digests[1]) == b"round two"
    assert sums.get(digests[2]) == b"round 3"
    with pytest.raises(BlobMissingError):
        sums.get(digests[3])  # larger than max_bytes: read from disk every time
