"""A password validator Django lacks: the password may not contain the username.

Django's UserAttributeSimilarityValidator compares the whole password with the username, so
"alicealice" or "alice2026!" pass for alice (#19). Usernames of fewer than 3 characters are
left alone: "al" inside a password says nothing.
"""

from django.core.exceptions import ValidationError


class NotTheUsernameValidator:
    MIN_LENGTH = 3

    def validate(self, password, user=None):
        username = (getattr(user, "username", "") or "").casefold()
        if len(username) >= self.MIN_LENGTH and username in (password or "").casefold():
            raise ValidationError("The password contains the username.", code="password_contains_username")

    def get_help_text(self):
        return "Your password can't contain your username."
