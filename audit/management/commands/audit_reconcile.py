from django.core.management.base import BaseCommand, CommandParser

from audit.reconcile import close_open_calls


class Command(BaseCommand):
    help = "Record outcome 'unknown' for calls left open (for example by a crash)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--older-than",
            type=int,
            metavar="SECONDS",
            help="only calls whose request is older (default AUDIT_RECONCILE_AFTER_SECONDS)",
        )

    def handle(self, *args: object, **options: object) -> None:
        closed = close_open_calls(older_than=options["older_than"])  # type: ignore[arg-type]
        self.stdout.write(f"closed {closed} open call(s) as unknown")
