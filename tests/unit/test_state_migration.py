"""Upgrades keep state: an older state.json is migrated (with a backup), a newer one refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from relance.store import state as state_module
from relance.store.state import (
    SCHEMA_VERSION,
    StateCorrupt,
    StateStore,
    StateTooNew,
    migrate,
    schema_version,
)

V0_CASE = {
    "number": "F-2024-017",
    "client_addrs": ["compta@client.fr"],
    "subject": "Facture F-2024-017",
    "root_message_id": "<f-2024-017@atelier.fr>",
    "amount": "840.00",
    "currency": "EUR",
    "due_date": "2024-11-30",
    "state": "chasing",
}


def write_v0(store: StateStore) -> bytes:
    """A state file as the first builds wrote it: no `meta`, empty tables left out."""
    raw = json.dumps({"cases": {"1": V0_CASE}}).encode()
    store.path.write_bytes(raw)
    return raw


def on_disk(store: StateStore) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(store.path.read_text())
    return data


@pytest.mark.parametrize(("data", "version"), [
    ({}, SCHEMA_VERSION),
    ({"cases": {}}, 0),
    ({"cases": {}, "meta": {"1": {"schema_version": 1}}}, 1),
    ({"meta": {"1": {"schema_version": 7}}}, 7),
])
def test_schema_version(data: dict[str, Any], version: int) -> None:
    assert schema_version(data) == version


@pytest.mark.parametrize("meta", [
    {"1": {"schema_version": "one"}},
    {"1": {"schema_version": -1}},
    {"1": {"schema_version": 1}, "2": {"schema_version": 2}},
])
def test_unreadable_version_is_corrupt(meta: dict[str, Any]) -> None:
    with pytest.raises(StateCorrupt, match="schema version"):
        schema_version({"meta": meta})


def test_v0_file_is_read_without_being_written(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    raw = write_v0(store)
    with store.reading() as view:
        assert view.get_case("F-2024-017").amount is not None  # type: ignore[union-attr]
    assert store.path.read_bytes() == raw, "a reader holds a shared lock: it never writes"


def test_upgrade_rewrites_v0_and_keeps_a_backup(tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    store = StateStore(tmp_path)
    raw = write_v0(store)
    with caplog.at_level("INFO", logger="relance"):
        assert store.upgrade() == 0
    data = on_disk(store)
    assert list(data["meta"].values()) == [{"schema_version": SCHEMA_VERSION, "log_seq": 0}]
    assert data["cases"] == {"1": V0_CASE}
    assert set(data) >= {"cases", "cursors", "sends", "meta"}
    assert (tmp_path / "state.json.v0.bak").read_bytes() == raw
    assert "event=state-upgraded" in caplog.text and f"from=0 to={SCHEMA_VERSION}" in caplog.text
    assert store.upgrade() is None, "a second start has nothing to do"


def test_first_transaction_upgrades_too(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    write_v0(store)
    with store.transaction() as tx:
        assert tx.get_case("F-2024-017") is not None
    assert list(on_disk(store)["meta"].values()) == [
        {"schema_version": SCHEMA_VERSION, "log_seq": 0}]
    assert (tmp_path / "state.json.v0.bak").exists()


def test_new_state_needs_no_upgrade(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    assert store.upgrade() is None
    assert not store.path.exists()


def test_newer_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    raw = json.dumps({"cases": {}, "meta": {"1": {"schema_version": SCHEMA_VERSION + 1}}})
    store.path.write_text(raw)
    with pytest.raises(StateTooNew) as caught:
        store.upgrade()
    message = str(caught.value)
    assert f"schema version {SCHEMA_VERSION + 1}" in message
    assert "newer relance" in message
    assert f"state.json.v{SCHEMA_VERSION}.bak" in message
    with pytest.raises(StateTooNew), store.reading():
        pass
    with pytest.raises(StateTooNew), store.transaction():
        pass
    assert store.path.read_text() == raw
    assert isinstance(caught.value, StateCorrupt), "commands report it like a bad file"


def test_migrations_chain_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The mechanism for the next format: each step runs once, in order, from the file's."""
    ran: list[str] = []

    def v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
        ran.append("1->2")
        for doc in data["cases"].values():
            doc["amount_cents"] = int(doc.pop("amount").replace(".", ""))
        return data

    def v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
        ran.append("2->3")
        data["notes"] = {}
        return data

    monkeypatch.setattr(state_module, "SCHEMA_VERSION", 3)
    monkeypatch.setattr(state_module, "MIGRATIONS",
                        {**state_module.MIGRATIONS, 1: v1_to_v2, 2: v2_to_v3})
    data = {"cases": {"1": dict(V0_CASE)}, "meta": {"1": {"schema_version": 1}}}
    upgraded, found = migrate(data)
    assert found == 1 and ran == ["1->2", "2->3"]
    assert upgraded["cases"]["1"]["amount_cents"] == 84000
    assert upgraded["meta"] == {"1": {"schema_version": 3}}


def test_missing_migration_step_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    nxt = SCHEMA_VERSION + 1
    monkeypatch.setattr(state_module, "SCHEMA_VERSION", nxt)
    with pytest.raises(StateCorrupt, match=f"schema version {SCHEMA_VERSION}: this relance "
                                           "cannot upgrade it"):
        migrate({"cases": {}, "meta": {"1": {"schema_version": SCHEMA_VERSION}}})


def test_failing_migration_is_reported_and_nothing_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(data: dict[str, Any]) -> dict[str, Any]:
        raise KeyError("amount")

    monkeypatch.setattr(state_module, "MIGRATIONS", {0: broken})
    store = StateStore(tmp_path)
    raw = write_v0(store)
    with pytest.raises(StateCorrupt, match="upgrading schema version 0 to 1"):
        store.upgrade()
    assert store.path.read_bytes() == raw
    assert not (tmp_path / "state.json.v0.bak").exists()


def write_v1(store: StateStore) -> bytes:
    """A state file as relance 1 wrote it: every table, the version, no log."""
    raw = json.dumps({"cases": {"1": V0_CASE}, "cursors": {}, "sends": {},
                      "meta": {"1": {"schema_version": 1, "digest_at": "2025-01-01"}}}).encode()
    store.path.write_bytes(raw)
    return raw


def test_v1_file_is_upgraded_to_the_log_format_with_a_backup(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    raw = write_v1(store)
    with store.reading() as view:
        assert view.get_case("F-2024-017") is not None
        assert view.meta("digest_at") == "2025-01-01"
    assert store.path.read_bytes() == raw, "reading never writes"

    assert store.upgrade() == 1
    assert (tmp_path / "state.json.v1.bak").read_bytes() == raw
    data = on_disk(store)
    assert data["meta"] == {"1": {"schema_version": SCHEMA_VERSION, "digest_at": "2025-01-01",
                                  "log_seq": 0}}
    assert data["cases"] == {"1": V0_CASE}
    with store.transaction() as tx:  # a commit after the upgrade goes to the log
        tx.set_meta("digest_at", "2025-02-01")
    assert on_disk(store)["meta"]["1"]["digest_at"] == "2025-01-01"
    with StateStore(tmp_path).reading() as view:
        assert view.meta("digest_at") == "2025-02-01"


def test_a_log_beside_a_v1_file_is_not_replayed_but_set_aside(tmp_path: Path) -> None:
    """relance 2 wrote a log, was downgraded, relance 1 wrote state.json: the log belongs
    to a state that no longer is."""
    store = StateStore(tmp_path)
    write_v1(store)
    stale = state_module.encode_log_line(
        1, {"cases": {"1": {**V0_CASE, "state": "paid"}}})
    store.log_path.write_bytes(stale)
    with store.reading() as view:
        assert view.get_case("F-2024-017").state.value == "chasing"  # type: ignore[union-attr]
    assert store.upgrade() == 1
    assert not store.log_path.exists()
    assert (tmp_path / "state.log.stale").read_bytes() == stale
    with StateStore(tmp_path).reading() as view:
        assert view.get_case("F-2024-017").state.value == "chasing"  # type: ignore[union-attr]
