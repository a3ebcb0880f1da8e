from django.core.management.base import BaseCommand, CommandError

from core import tokens
from core.actors import Actor
from core.errors import DomainError
from core.roles import SCOPES


class Command(BaseCommand):
    help = "Create an agent token; the token is printed once, on the last line."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument(
            "--scopes", required=True, help=f"Comma-separated, from: {', '.join(SCOPES)}"
        )
        parser.add_argument("--expires-days", type=int, default=None)

    def handle(self, *args, name, scopes, expires_days, **options):
        try:
            created = tokens.create_token(Actor.system("manage.py"), name, scopes, expires_days)
        except DomainError as exc:
            raise CommandError(exc.message) from None
        t = created.token
        expiry = t.expires_at.strftime("%Y-%m-%d %H:%M UTC") if t.expires_at else "never"
        self.stdout.write(
            f"Token {t.name!r} (id {t.pk}) scopes={','.join(t.scopes)} "
            f"expires={expiry}. Store it now; it is not shown again:"
        )
        self.stdout.write(created.raw)
