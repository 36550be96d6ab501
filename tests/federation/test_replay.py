"""The nonce store: replays refused, also after a restart; old nonces pruned."""

from __future__ import annotations

from node.federation.replay import NonceStore

T0 = 1_800_000_000


def test_replay_refused_and_survives_restart(tmp_path):
    path = str(tmp_path / "federation" / "nonces.db")
    store = NonceStore(path)
    store.open()
    assert store.record("a" * 52, "0" * 32, T0, T0)
    assert not store.record("a" * 52, "0" * 32, T0, T0)
    assert store.record("b" * 52, "0" * 32, T0, T0)  # per origin
    store.close()
    again = NonceStore(path)
    again.open()
    assert not again.record("a" * 52, "0" * 32, T0, T0 + 30)
    again.close()


def test_pruned_beyond_the_window(tmp_path):
    store = NonceStore(str(tmp_path / "n.db"), window=60)
    store.open()
    for i in range(100):
        assert store.record("a" * 52, f"{i:032x}", T0, T0)
    assert store.count() == 100
    assert store.record("a" * 52, "f" * 32, T0 + 62, T0 + 62)  # triggers a prune
    assert store.count() == 1
    store.close()
