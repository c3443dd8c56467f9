from django.core.management.base import BaseCommand, CommandError, CommandParser

from gateway import catalog
from gateway.models import Connection, ToolDefinition


class Command(BaseCommand):
    help = (
        "Approve a connection's tool list as the upstream offers it now (or only the named "
        "tools). From the first approval on, new or changed tools are hidden from agents and "
        "refused until approved. Without --yes, prints what would change."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--connection", required=True, metavar="SLUG")
        parser.add_argument("--tool", action="append", metavar="NAME", help="only this tool")
        parser.add_argument("--yes", action="store_true", help="approve (otherwise: show)")

    def handle(self, *args: object, **options: object) -> None:
        connection = Connection.objects.filter(slug=options["connection"]).first()
        if connection is None:
            raise CommandError(f"no connection {options['connection']!r}")
        names = options["tool"]
        rows = ToolDefinition.objects.filter(connection=connection)
        if names:
            assert isinstance(names, list)
            missing = set(names) - set(rows.filter(name__in=names).values_list("name", flat=True))
            if missing:
                raise CommandError(
                    f"the upstream has not listed {', '.join(sorted(missing))} yet "
                    "(tools appear once an agent has listed them through the gateway)"
                )
            rows = rows.filter(name__in=names)
        if not rows.exists():
            raise CommandError("no tools seen yet: list the tools through the gateway first")
        for row in rows:
            self.stdout.write(f"{row.name}: {row.state.label}")
            if row.state == "changed":
                self.stdout.write(catalog.diff(row))
        if not options["yes"]:
            self.stdout.write("(nothing changed; add --yes to approve)")
            return
        count = catalog.approve(connection, names=list(names) if names else None)
        self.stdout.write(f"approved {count} tool definition(s); {connection.slug} is pinned")
