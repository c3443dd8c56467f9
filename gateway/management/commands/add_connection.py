from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from gateway.actions import StdioSpec, save_connection


def parse_header(raw: str) -> tuple[str, str]:
    name, sep, value = raw.partition(":")
    name, value = name.strip(), value.strip()
    if not sep or not name or any(c in name for c in " \t\r\n") or "\n" in value:
        raise CommandError(f"--header must look like 'Name: value', not {raw!r}")
    return name, value


def parse_env(raw: str) -> tuple[str, str]:
    name, sep, value = raw.partition("=")
    if not sep or not name or not name.replace("_", "a").isalnum():
        raise CommandError(f"--env must look like NAME=value, not {raw!r}")
    return name, value


class Command(BaseCommand):
    help = "Create or update an MCP connection that agents reach at /mcp/<slug>."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--slug", required=True)
        parser.add_argument(
            "--transport", choices=["streamable_http", "sse", "stdio"], default="streamable_http"
        )
        parser.add_argument(
            "--url",
            default="",
            help="the upstream's Streamable HTTP URL (sse: the URL of its event stream, /sse)",
        )
        parser.add_argument("--command", default="", help="stdio: the command to run")
        parser.add_argument(
            "--arg", action="append", default=[], help="stdio: one argument (repeatable)"
        )
        parser.add_argument("--cwd", default="", help="stdio: working directory")
        parser.add_argument(
            "--env",
            action="append",
            default=None,
            metavar="NAME=VALUE",
            help="stdio: an environment variable, stored encrypted (repeatable)",
        )
        parser.add_argument(
            "--max-processes", type=int, default=8, help="stdio: processes at most at once"
        )
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
        transport = str(options["transport"])
        stdio = None
        if transport == "stdio":
            if not options["command"]:
                raise CommandError("--transport stdio needs --command")
            env = None
            if options["env"] is not None:
                assert isinstance(options["env"], list)
                env = dict(parse_env(e) for e in options["env"])
            max_processes = options["max_processes"]
            if not isinstance(max_processes, int) or max_processes < 1:
                raise CommandError("--max-processes must be 1 or more")
            stdio = StdioSpec(
                command=str(options["command"]),
                args=tuple(options["arg"]),  # type: ignore[arg-type]
                cwd=str(options["cwd"]),
                env=env,
                max_processes=max_processes,
            )
        elif not options["url"]:
            raise CommandError("--url is required for Streamable HTTP and HTTP+SSE connections")
        try:
            connection, created = save_connection(
                slug=str(options["slug"]),
                url=str(options["url"]),
                transport=transport,
                stdio=stdio,
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
        target = connection.url or " ".join([connection.command, *connection.args])
        self.stderr.write(f"{verb} connection {connection.slug} -> {target}")
