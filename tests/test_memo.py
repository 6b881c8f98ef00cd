"""
The memo of values computed from the index structure.
"""

from __future__ import annotations

from devpi_tx.model.memo import StateMemo
from devpi_tx.storage.sqlite import SQLiteStorage


def test_memo_is_kept_across_commits_of_other_keys_and_dropped_by_structure(tmp_path):
    storage = SQLiteStorage(str(tmp_path / "state.sqlite"))
    memo = StateMemo(storage)
    computed = []

    def compute():
        computed.append(1)
        return len(computed)

    assert memo.get("k", compute) == 1
    for key in ("mirror/root/pypi/hello", "file/root/pypi/+f/abc/hello-1.0.tar.gz", "version/u/i/p/1.0"):
        with storage.transaction() as tx:
            tx.set(key, {})
        assert memo.get("k", compute) == 1, key
    for n, key in enumerate(("user/alice", "project/alice/dev/hello"), start=2):
        with storage.transaction() as tx:
            tx.set(key, {})
        assert memo.get("k", compute) == n, key
    storage.close()


def test_memo_is_bounded(tmp_path):
    storage = SQLiteStorage(str(tmp_path / "state.sqlite"))
    memo = StateMemo(storage, max_entries=3)
    for n in range(10):
        memo.get(n, lambda n=n: n)
    assert len(memo._values) <= 3
    storage.close()
