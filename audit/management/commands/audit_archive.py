import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

from django.apps import apps
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError, connection, transaction
from django.utils.timezone import now

from audit import chain, checkpoints
from audit.canonical import GENESIS_HASH
from audit.models import HASHED_FIELDS, AuditRecord, Kind, hash_body

ARCHIVE_FORMAT = 1
SQLITE_DELETE_TRIGGER = "audit_record_no_delete"


def _line(handle: TextIO, value: dict[str, Any]) -> None:
    handle.write(json.dumps(value, ensure_ascii=False, separators=(",", ":")) + "\n")


class Command(BaseCommand):
    help = (
        "Move the oldest audit records into a JSON Lines file and delete them from the "
        "database. Only records already covered by a signed checkpoint can be archived: "
        "--before must not be beyond the latest checkpoint's sequence number. The file "
        "holds a header, the signed checkpoints that cover the records, every record with "
        "its hash, and a trailer with the count; each record can be re-hashed offline. "
        "The deletion and an 'audit.archive' event are committed together, and a signed "
        "anchor checkpoint at SEQ-1 tells audit_verify where the chain now starts. Run it "
        "as the role that owns the tables (the runtime role has no DELETE grant). If the "
        "process is killed after the anchor is written but before the commit, audit_verify "
        "reports record SEQ missing: delete the file anchor-<SEQ-1>.json from the "
        "checkpoint directory and run the archive again."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--before",
            type=int,
            required=True,
            metavar="SEQ",
            help="archive the records whose sequence number is below SEQ",
        )
        parser.add_argument(
            "--output", required=True, metavar="FILE", help="the archive to create (.jsonl)"
        )

    def handle(self, *args: object, **options: Any) -> None:
        before: int = options["before"]
        output = Path(options["output"])
        if connection.vendor not in ("postgresql", "sqlite"):
            raise CommandError(f"archiving is not supported on {connection.vendor}")
        if output.exists():
            raise CommandError(f"{output} already exists: choose a new archive file")
        signed = checkpoints.load_all()
        if signed.error:
            raise CommandError(f"cannot archive: {signed.error}")
        anchor = signed.anchor
        first = anchor.seq + 1 if anchor else 1
        if before <= first:
            raise CommandError(
                f"nothing to archive before {before}: the chain starts at record {first}"
            )
        latest = max(signed.checkpoints, key=lambda c: c.seq, default=None)
        if latest is None or before > latest.seq:
            signed_up_to = f"record {latest.seq}" if latest else "no record yet"
            raise CommandError(
                f"--before {before} is beyond the latest signed checkpoint ({signed_up_to}); "
                "only signed records can be archived (see audit_checkpoint)"
            )

        behind = _sinks_behind(before - 1)
        if behind:
            raise CommandError(
                f"SIEM sink(s) {', '.join(behind)} have not yet received every record up to "
                f"{before - 1}: wait until they catch up, or disable them, before archiving"
            )

        # Archive only a chain that verifies: the anchor signed below would otherwise
        # vouch for whatever was changed in the database.
        result = chain.verify()
        if not result.ok:
            raise CommandError(f"the audit trail does not verify, nothing archived: {result.error}")

        # The anchor the records start from, the checkpoints among them, and the first
        # checkpoint at or after the last of them.
        covering = [anchor] if anchor else []
        covering += sorted((c for c in signed.checkpoints if c.seq < before - 1), key=_seq)
        covering.append(min((c for c in signed.checkpoints if c.seq >= before - 1), key=_seq))
        start_hash = anchor.head_hash if anchor else GENESIS_HASH
        try:
            count, last_hash, digest = self._write(output, first, before, start_hash, covering)
        except FileExistsError:
            raise CommandError(f"{output} already exists: choose a new archive file") from None
        except BaseException:
            output.unlink(missing_ok=True)
            raise

        written: checkpoints.Checkpoint | None = None
        try:
            with transaction.atomic():
                deleted = self._delete(before)
                if deleted != count:
                    raise CommandError(
                        f"{deleted} records were deleted but {count} were archived "
                        "(is another archive running?); rolled back"
                    )
                chain.append(
                    kind=Kind.EVENT,
                    event="audit.archive",
                    details={
                        "first_seq": first,
                        "last_seq": before - 1,
                        "records": count,
                        "last_hash": last_hash,
                        "file": output.name,
                        "sha256": digest,
                    },
                )
                # Written last inside the transaction: a failed commit removes it again.
                written = checkpoints.write(before - 1, last_hash, kind="anchor")
        except BaseException as exc:
            if written is not None:
                anchor_file = f"anchor-{written.seq:012d}.json"
                (Path(settings.AUDIT["CHECKPOINT_DIR"]) / anchor_file).unlink(missing_ok=True)
            output.unlink(missing_ok=True)
            if isinstance(exc, DatabaseError):
                raise CommandError(f"nothing archived, the database refused: {exc}") from exc
            raise
        self.stdout.write(
            f"archived {count} records ({first}..{before - 1}) to {output}; "
            f"the chain now starts at record {before} (anchor signed)"
        )

    def _write(
        self,
        output: Path,
        first: int,
        before: int,
        start_hash: str,
        covering: list[checkpoints.Checkpoint],
    ) -> tuple[int, str, str]:
        """Stream the records into the file and make it durable; returns (count, the last
        record's hash, the file's SHA-256)."""
        count, last_hash = 0, start_hash
        with output.open("x", encoding="utf-8") as handle:
            _line(
                handle,
                {
                    "type": "archive",
                    "format": ARCHIVE_FORMAT,
                    "created_at": now().isoformat(timespec="seconds"),
                    "first_seq": first,
                    "last_seq": before - 1,
                    "prev_hash": start_hash,
                },
            )
            for checkpoint in covering:
                _line(handle, {"type": "checkpoint", **asdict(checkpoint)})
            rows = (
                AuditRecord.objects.filter(seq__gte=first, seq__lt=before)
                .order_by("seq")
                .values(*HASHED_FIELDS, "hash")
                .iterator(chunk_size=5000)
            )
            for row in rows:
                if row["prev_hash"] != last_hash:
                    raise CommandError(f"record {row['seq']} does not follow the one before")
                _line(
                    handle,
                    {
                        "type": "record",
                        **hash_body(row),
                        "prev_hash": row["prev_hash"],
                        "hash": row["hash"],
                    },
                )
                count += 1
                last_hash = row["hash"]
            _line(handle, {"type": "end", "records": count, "last_hash": last_hash})
            handle.flush()
            os.fsync(handle.fileno())
        if count != before - first:
            raise CommandError(
                f"expected {before - first} records {first}..{before - 1}, found {count}"
            )
        return count, last_hash, hashlib.sha256(output.read_bytes()).hexdigest()

    def _delete(self, before: int) -> int:
        table = connection.ops.quote_name(AuditRecord._meta.db_table)
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                # The append-only trigger lets DELETE through only for this transaction.
                cursor.execute("SET LOCAL mcpgw.audit_archive = 'on'")
                cursor.execute(f"DELETE FROM {table} WHERE seq < %s", [before])  # noqa: S608
                deleted = cursor.rowcount
                cursor.execute("SET LOCAL mcpgw.audit_archive = 'off'")
                return deleted
            # SQLite triggers cannot read a session setting: drop the DELETE trigger and
            # put it back in the same transaction.
            cursor.execute(
                "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = %s",
                [SQLITE_DELETE_TRIGGER],
            )
            found = cursor.fetchone()
            if found is None:
                raise CommandError(
                    f"the trigger {SQLITE_DELETE_TRIGGER} is missing: run manage.py migrate"
                )
            cursor.execute(f"DROP TRIGGER {SQLITE_DELETE_TRIGGER}")
            cursor.execute(f"DELETE FROM {table} WHERE seq < %s", [before])  # noqa: S608
            deleted = cursor.rowcount
            cursor.execute(found[0])
            return deleted


def _sinks_behind(seq: int) -> list[str]:
    """Enabled SIEM sinks that would never receive records archived up to `seq`."""
    try:
        sink = apps.get_model("audit", "SiemSink")
    except LookupError:
        return []
    return list(
        sink._default_manager.filter(enabled=True, cursor__lt=seq)
        .order_by("name")
        .values_list("name", flat=True)
    )


def _seq(checkpoint: checkpoints.Checkpoint) -> int:
    return checkpoint.seq
