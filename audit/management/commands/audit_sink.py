from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit import siem
from audit.models import SiemSink, SinkKind


class Command(BaseCommand):
    help = "Manage the SIEM sinks that receive the audit trail: add, list, remove, forward."

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

        add = actions.add_parser("add", help="add a sink; it receives the trail from the start")
        add.add_argument("--name", required=True)
        target = add.add_mutually_exclusive_group(required=True)
        target.add_argument("--http", metavar="URL", help="POST JSON Lines batches to URL")
        target.add_argument(
            "--syslog", choices=["udp", "tcp"], help="send RFC 5424 messages to --host --port"
        )
        add.add_argument("--host", default="")
        add.add_argument("--port", type=int)
        add.add_argument(
            "--hmac-secret-file",
            type=Path,
            metavar="FILE",
            help="sign HTTP batches with the key in FILE (X-Audit-Signature)",
        )
        add.add_argument("--batch-size", type=int, default=500)

        actions.add_parser("list", help="show the sinks, their cursor, lag and last error")

        remove = actions.add_parser("remove", help="remove a sink")
        remove.add_argument("--name", required=True)

        actions.add_parser(
            "forward", help="ship new records to every enabled sink now, ignoring backoff"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        getattr(self, f"handle_{options['action']}")(options)

    def handle_add(self, options: dict[str, Any]) -> None:
        if options["http"] and (options["host"] or options["port"] is not None):
            raise CommandError("--host and --port are for --syslog sinks")
        if options["syslog"] and options["hmac_secret_file"]:
            raise CommandError("--hmac-secret-file is for --http sinks")
        secret = ""
        if options["hmac_secret_file"]:
            try:
                secret = options["hmac_secret_file"].read_text().strip()
            except OSError as exc:
                raise CommandError(f"--hmac-secret-file: {exc.strerror}") from None
            if not secret:
                raise CommandError("--hmac-secret-file is empty")
        kind = SinkKind.HTTP if options["http"] else f"syslog_{options['syslog']}"
        try:
            sink = siem.add_sink(
                name=options["name"],
                kind=kind,
                url=options["http"] or "",
                host=options["host"],
                port=options["port"],
                hmac_secret=secret,
                batch_size=options["batch_size"],
            )
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        signed = " (signed)" if sink.signed else ""
        self.stderr.write(
            f"added sink {sink.name}: {sink.get_kind_display()} {sink.target}{signed}"
        )

    def handle_list(self, options: dict[str, Any]) -> None:
        rows = [("NAME", "KIND", "TARGET", "ENABLED", "CURSOR", "LAG", "LAST ERROR")]
        for sink in SiemSink.objects.all():
            error = ""
            if sink.failures:
                error = (
                    f"{sink.last_error_at:%Y-%m-%d %H:%M:%S} x{sink.failures}: {sink.last_error}"
                )
            rows.append(
                (
                    sink.name,
                    sink.kind,
                    sink.target,
                    "yes" if sink.enabled else "no",
                    str(sink.cursor),
                    str(sink.lag),
                    error,
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
        for row in rows:
            cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
            self.stdout.write("  ".join([*cells, row[-1]]).rstrip())

    def handle_remove(self, options: dict[str, Any]) -> None:
        if not siem.remove_sink(options["name"]):
            raise CommandError(f"no sink named {options['name']!r}")
        self.stderr.write(f"removed sink {options['name']}")

    def handle_forward(self, options: dict[str, Any]) -> None:
        failed = 0
        for result in siem.forward_all(ignore_backoff=True):
            if result.skipped:
                self.stdout.write(f"{result.sink}: skipped (another worker is shipping it)")
            elif result.error:
                failed += 1
                self.stdout.write(
                    f"{result.sink}: sent {result.sent}, cursor {result.cursor}, "
                    f"failed: {result.error}"
                )
            else:
                self.stdout.write(f"{result.sink}: sent {result.sent}, cursor {result.cursor}")
        if failed:
            raise CommandError(f"{failed} sink(s) did not accept every record; they will retry")
