from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from gateway.actions import issue_token
from gateway.models import Connection

SCOPES = ("mcp", "api")


class Command(BaseCommand):
    help = "Issue a bearer token for one agent run. The token is printed once, on stdout."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--user", required=True, help="the token's owner (username)")
        parser.add_argument(
            "--connection", metavar="SLUG", help="limit the token to one connection"
        )
        parser.add_argument("--ttl", type=int, metavar="SECONDS", help="expire after this long")
        parser.add_argument("--run", default="", metavar="LABEL", help="a label for the agent run")
        parser.add_argument(
            "--scope", action="append", choices=SCOPES, help="mcp (default) and/or api"
        )

    def handle(self, *args: object, **options: object) -> None:
        User = get_user_model()
        try:
            user = User.objects.get(username=options["user"], is_active=True)
        except User.DoesNotExist:
            raise CommandError(f"no active user {options['user']!r}") from None
        connection = None
        if options["connection"]:
            try:
                connection = Connection.objects.get(slug=options["connection"])
            except Connection.DoesNotExist:
                raise CommandError(f"no connection {options['connection']!r}") from None
        ttl_seconds = options["ttl"]
        if ttl_seconds is not None and (not isinstance(ttl_seconds, int) or ttl_seconds <= 0):
            raise CommandError("--ttl must be a positive number of seconds")
        token, secret = issue_token(
            user=user,
            connection=connection,
            ttl=timedelta(seconds=ttl_seconds) if ttl_seconds else None,
            run_label=str(options["run"]),
            scopes=list(options["scope"] or ["mcp"]),  # type: ignore[call-overload]
        )
        self.stdout.write(secret)
        expiry = token.expires_at.isoformat() if token.expires_at else "never"
        self.stderr.write(f"issued {token.display} for {user} (expires {expiry})")
