"""Which new usernames are refused: look-alikes of other users.

A username is NFKC-normalised first (Django's UsernameField does it), so compatibility
forms (`ａｌｉｃｅ`, `ﬁ`) become their plain letters. Then it is refused when
- its letters come from more than one script (`аlice` with a Cyrillic `а`); digits and
  `_ . @ + -` belong to every script, so `alice_99` is one script; or
- its skeleton equals an existing username's. The skeleton maps every character to
  one representative of its Unicode TR39 confusable class (the confusables.txt data
  of the `confusable_homoglyphs` package, joined into classes) and folds case, so
  `aIice` (capital i), `ALICE` and an all-Cyrillic `сосо` match `alice`, `alice` and
  `coco`.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from confusable_homoglyphs import confusables
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db.models.signals import post_save
from django.dispatch import receiver

from chat.models import UsernameSkeleton

RULE = (
    "Letters of one script (Latin, Cyrillic, Greek...), digits and @ . + - _; "
    "not a look-alike of an existing username."
)


@cache
def _classes() -> dict[str, str]:
    """Each confusable character -> its class's representative (the lowest code
    point), from the single-character pairs of confusables.txt (union-find)."""
    data = json.loads(
        resources.files("confusable_homoglyphs")
        .joinpath("confusables.json")
        .read_text()
    )
    parent: dict[str, str] = {}

    def find(char: str) -> str:
        while parent.get(char, char) != char:
            char = parent[char]
        return char

    for char, homoglyphs in data.items():
        for homoglyph in homoglyphs:
            if len(char) == 1 and len(homoglyph["c"]) == 1:
                low, high = sorted((find(char), find(homoglyph["c"])))
                if low != high:
                    parent[high] = low
    return {char: find(char) for char in parent}


def skeleton(username: str) -> str:
    """What `username` looks like: confusable characters mapped to one
    representative, case folded (twice, so that `I` meets `l` before folding)."""
    classes = _classes()
    mapped = "".join(classes.get(c, c) for c in username).casefold()
    return "".join(classes.get(c, c) for c in mapped)


def username_check(username: str) -> None:
    """ValidationError if the (NFKC-normalised) username mixes scripts or looks like
    an existing user's."""
    if confusables.is_mixed_script(username):
        raise ValidationError(
            "This username mixes letters of different scripts (e.g. a Cyrillic "
            "letter among Latin ones): use letters of one script.",
            code="mixed_script",
        )
    if UsernameSkeleton.objects.filter(skeleton=skeleton(username)).exists():
        raise ValidationError(
            "This username looks like an existing one: pick another.",
            code="confusable",
        )


@receiver(
    post_save,
    sender=settings.AUTH_USER_MODEL,
    dispatch_uid="chat.security.usernames.skeleton",
)
def _keep_skeleton(
    sender: Any, instance: Any, update_fields: Any = None, **kwargs: Any
) -> None:
    """Every user's skeleton is stored, whichever way the user was saved (sign-up,
    admin, createsuperuser, a shell); a save of other fields (last_login) skips it."""
    if update_fields is not None and "username" not in update_fields:
        return
    UsernameSkeleton.objects.update_or_create(
        user_id=instance.pk,
        defaults={"skeleton": skeleton(instance.get_username())},
    )
