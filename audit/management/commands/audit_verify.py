import time

from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit.chain import verify


class Command(BaseCommand):
    help = (
        "Verify the audit trail's hash chain and its signed checkpoints. Exits 0 and prints "
        "the number of records verified when intact; exits 1 naming the first bad sequence "
        "number otherwise."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--since", type=int, metavar="SEQ", help="start at this record")

    def handle(self, *args: object, **options: object) -> None:
        since = options["since"]
        if since is not None and (not isinstance(since, int) or since < 1):
            raise CommandError("--since must be a sequence number (1 or more)")
        started = time.perf_counter()
        result = verify(since=since)  # type: ignore[arg-type]
        elapsed = time.perf_counter() - started
        rate = result.verified / elapsed if elapsed > 0 else 0.0
        if not result.ok:
            where = f" at sequence {result.bad_seq}" if result.bad_seq is not None else ""
            self.stderr.write(f"FAILED{where}: {result.error}")
            self.stderr.write(f"{result.verified} records verified before the failure")
            raise SystemExit(1)
        span = f" (sequence {result.first_seq}..{result.last_seq})" if result.first_seq else ""
        self.stdout.write(
            f"OK: {result.verified} records verified{span}, "
            f"{result.checkpoints_checked} signed checkpoints matched, "
            f"{rate:,.0f} records/s"
        )
