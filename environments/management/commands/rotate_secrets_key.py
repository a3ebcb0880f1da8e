from cryptography.fernet import Fernet
from django.core.management.base import BaseCommand

from environments.services import rotate_secret_encryption


class Command(BaseCommand):
    help = (
        "Re-encrypt every secret with the newest key. Rotation: put a new key first in "
        "SECRETS_ENCRYPTION_KEYS (keep the old ones after it), run this, then drop the old keys."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--generate",
            action="store_true",
            help="Only print a new key to put first in SECRETS_ENCRYPTION_KEYS.",
        )

    def handle(self, *args, generate, **options):
        if generate:
            self.stdout.write(Fernet.generate_key().decode())
            return
        count = rotate_secret_encryption()
        self.stdout.write(f"re-encrypted {count} secret values with the newest key")
