from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from gateway.actions import save_connection


def parse_header(raw: str) -> tuple[str, str]:
    name, sep, value = raw.partition(":")
    name, value = name.strip(), value.strip()
    if not sep or not name or any(c in name for c in " \t\r\n") or "\n" in value:
        raise CommandError(f"--header must look like 'Name: value', not {raw!r}")
    return name, value


class Command(BaseCommand):
    help = "Create or update an MCP connection that agents reach at /mcp/<slug>."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--slug", required=True)
        parser.add_argument("--url", required=True, help="the upstream's Streamable HTTP URL")
        parser.add_argument("--name", default="")
        parser.add_argument(
            "--header",
            action="append",
            default=None,
            metavar="'Name: value'",
            help="a header sent upstream, e.g. a credential (repeatable; replaces stored ones)",
        )
        parser.add_argument("--disabled", action="store_true", help="create it switched off")

    def handle(self, *args: object, **options: object) -> None:
        raw_headers = options["header"]
        headers = None
        if raw_headers is not None:
            assert isinstance(raw_headers, list)
            headers = dict(parse_header(h) for h in raw_headers)
        try:
            connection, created = save_connection(
                slug=str(options["slug"]),
                url=str(options["url"]),
                name=str(options["name"]),
                headers=headers,
                enabled=not options["disabled"],
            )
        except ValidationError as exc:
            messages = "; ".join(
                f"{field}: {' '.join(errors)}" for field, errors in exc.message_dict.items()
            )
            raise CommandError(messages) from None
        verb = "created" if created else "updated"
        self.stderr.write(f"{verb} connection {connection.slug} -> {connection.url}")
