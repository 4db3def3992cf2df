from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from rest_framework.authtoken.models import Token

from labeling.services import create_annotator


class Command(BaseCommand):
    help = "Create an annotator account (or reset its password) and print its API token."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--password", required=True)
        parser.add_argument("--admin", action="store_true", help="also a labeling admin (staff)")
        parser.add_argument("--email", default="")

    def handle(self, *args, username, password, admin, email, **options):
        try:
            user = create_annotator(username=username, password=password, is_admin=admin, email=email)
        except ValidationError as exc:
            raise CommandError(f"invalid account: {'; '.join(exc.messages)}") from exc
        token = Token.objects.get(user=user)
        role = "labeling admin" if admin else "annotator"
        self.stdout.write(self.style.SUCCESS(f"{role} {user.username} ready; API token: {token.key}"))
