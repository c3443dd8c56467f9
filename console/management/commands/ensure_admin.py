import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    help = "Create the first admin if no admin exists yet, printing a one-time password."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", default="admin")

    def handle(self, *args: object, **options: object) -> None:
        User = get_user_model()
        if User.objects.filter(is_superuser=True, is_active=True).exists():
            return
        password = secrets.token_urlsafe(18)
        username = str(options["username"])
        user, _ = User.objects.get_or_create(username=username)
        user.is_staff = user.is_superuser = user.is_active = True
        user.set_password(password)
        user.save()
        self.stdout.write(
            "\n".join(
                [
                    "",
                    "  First admin created. This password is shown only once:",
                    f"    username: {username}",
                    f"    password: {password}",
                    "  Change it after logging in (or run `manage.py changepassword`).",
                    "",
                ]
            )
        )
