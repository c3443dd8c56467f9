"""Group commit: records asked for together share a transaction, and nothing else changes."""

import asyncio
from typing import Any

import pytest

from audit import chain, writer
from audit.models import AuditRecord, Kind

pytestmark = pytest.mark.django_db(transaction=True)


def request_fields(n: int, **overrides: Any) -> dict[str, Any]:
    return {
        "kind": Kind.CALL_REQUEST,
        "connection": "demo",
        "method": "tools/call",
        "target": f"tool-{n}",
        "arguments": {"n": n},
        **overrides,
    }


@pytest.fixture
def transactions(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every transaction the writer commits (the real append_many runs)."""
    sizes: list[int] = []
    real = chain.append_many

    def counted(rows: list[dict[str, Any]]) -> list[AuditRecord]:
        records = real(rows)
        sizes.append(len(rows))
        return records

    monkeypatch.setattr(writer, "_append_many", writer.sync_to_async(counted))
    return sizes


async def test_concurrent_records_share_transactions_and_keep_one_gap_free_chain(transactions):
    records = await asyncio.gather(*(writer.append(**request_fields(n)) for n in range(60)))

    # Each caller got its own record back, committed.
    assert [r.target for r in records] == [f"tool-{n}" for n in range(60)]
    seqs = sorted(r.seq for r in records)
    assert seqs == list(range(seqs[0], seqs[0] + 60))
    assert sum(transactions) == 60
    assert len(transactions) < 60, transactions
    stored = await asyncio.to_thread(
        lambda: list(AuditRecord.objects.order_by("seq").values_list("target", flat=True))
    )
    assert sorted(stored) == sorted(f"tool-{n}" for n in range(60))
    result = await asyncio.to_thread(chain.verify)
    assert result.ok, result.error
    assert result.verified == 60


async def test_a_record_the_database_refuses_fails_only_its_own_call(transactions):
    # A username longer than the column: Postgres refuses the whole batch's INSERT.
    fields = [request_fields(n) for n in range(10)]
    fields[4] = request_fields(4, username="x" * 500)
    outcomes = await asyncio.gather(*(writer.append(**f) for f in fields), return_exceptions=True)
    failed = [n for n, outcome in enumerate(outcomes) if isinstance(outcome, BaseException)]
    assert failed == [4]
    assert all(isinstance(o, AuditRecord) for n, o in enumerate(outcomes) if n != 4)
    result = await asyncio.to_thread(chain.verify)
    assert result.ok, result.error
    assert result.verified == 9


async def test_a_caller_that_stops_waiting_still_gets_its_record_written(transactions):
    task = asyncio.ensure_future(writer.append(**request_fields(1)))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await writer.append(**request_fields(2))
    targets = await asyncio.to_thread(
        lambda: list(AuditRecord.objects.order_by("seq").values_list("target", flat=True))
    )
    assert targets == ["tool-1", "tool-2"]
