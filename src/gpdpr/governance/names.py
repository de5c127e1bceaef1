"""Names of organisations and people, as shown to the panel, checkers and the public: normalised
and checked so that none can pass for another.

A name is taken in Unicode NFKC form (full-width, ligature and other compatibility forms become
their plain letters), with runs of spaces made one. It may hold letters, combining marks, digits,
spaces and punctuation, and the symbols `+` and `&`; nothing else (an allowlist: no control or
format characters, so no right-to-left override and no zero-width characters, no private-use or
unassigned code points). Its letters may not mix scripts in a way Unicode's confusables data
marks as dangerous (a Cyrillic "е" in a Latin word), checked with the confusable_homoglyphs
library.

Organisations' names must also differ in *skeleton* from every other's. The skeleton is a small
version of Unicode TR39's: the name case-folded, accents dropped, each letter replaced by the
plain Latin letter it can be mistaken for (the library's homoglyph data), then `0` read as `o`,
`1` and `i` as `l`, `rn` as `m` and `vv` as `w`, keeping only letters and digits. "Leeds
Univ3rsity" and "Leeds University" differ; "LEEDS UNIVERSITY", "Leeds Unіversity" (Cyrillic і)
and "Leeds Un1versity" have the same skeleton, and the second is refused.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

from confusable_homoglyphs import confusables

from gpdpr.errors import UserError

MAX_LENGTH = 200
_SYMBOLS = frozenset("+&")
_SPACES = re.compile(r" +")


def normal(name: str) -> str:
    """NFKC, runs of spaces made one, trimmed: how a name is stored and looked up."""
    return _SPACES.sub(" ", unicodedata.normalize("NFKC", name)).strip()


def clean(name: str, what: str) -> str:
    """`name` normalised (see `normal`), or a UserError saying which character is not allowed
    in `what` (like "an organisation's name") and where."""
    text = normal(name)
    if not text:
        raise UserError(f"{what} is empty: give one")
    if len(text) > MAX_LENGTH:
        raise UserError(f"{what} is longer than {MAX_LENGTH} characters")
    for position, ch in enumerate(text, 1):
        if not _allowed(ch):
            code = f"U+{ord(ch):04X}"
            named = unicodedata.name(ch, "")
            shown = f"{named} ({code})" if named else f"the unnamed character {code}"
            raise UserError(
                f"{what} holds {shown} at character {position}, which a name may not hold: "
                "use letters, digits, spaces and punctuation only"
            )
    if confusables.is_dangerous(text):
        raise UserError(
            f"{what} {text!r} mixes letters of different scripts that look alike (as a Cyrillic "
            "'е' in a Latin word): type it in one script"
        )
    return text


def _allowed(ch: str) -> bool:
    if ch == " " or ch in _SYMBOLS:
        return True
    return unicodedata.category(ch)[0] in "LMNP"


def skeleton(name: str) -> str:
    """What a name looks like, for telling look-alikes apart (see the module's docstring)."""
    decomposed = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", name).casefold())
    plain = "".join(_latin(ch) for ch in decomposed if ch.isalnum())
    return plain.translate(_FOLD).replace("rn", "m").replace("vv", "w").replace("cl", "d")


_FOLD = str.maketrans({"0": "o", "1": "l", "i": "l", "|": "l"})


@lru_cache(maxsize=4096)
def _latin(ch: str) -> str:
    if ch.isascii():
        return ch.lower()
    found = confusables.is_confusable(ch, greedy=True)
    if found:
        for glyph in found[0]["homoglyphs"]:
            if len(glyph["c"]) == 1 and glyph["c"].isascii() and glyph["c"].isalnum():
                return str(glyph["c"]).lower()
    return ch
