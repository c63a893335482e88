"""Text folding shared by the price reader and the product resolver.

Posts arrive with Unicode look-alikes (``S𝑎𝑣𝑙𝑜𝑛`` in mathematical italic), no-break spaces, markdown
kept by some scrapers (``**bold**``, ``~~200~~ 180``) and emoji used as bullets and field markers.
"""
from __future__ import annotations

import re
import unicodedata

# Emoji and pictographs, arrows, dingbats, box drawing and geometric shapes, variation selectors, joiners.
_SYMBOLS = re.compile(
    "[\U0001F000-\U0001FAFF\u2190-\u21FF\u2300-\u23FF\u2460-\u24FF\u2500-\u27BF\u2900-\u297F"
    "\u2B00-\u2BFF\u3030\u303D\u3297\u3299\uFE00-\uFE0F\u200B-\u200F\u2060\u20E3\U000E0000-\U000E007F"
    "\u00A4\u00A9\u00AE\u2122\u2022\u25CF\u00B7\u2023\u2043]"
)
_STRUCK = re.compile(r"~~[^~\n]*~~|<s>[^<\n]*</s>|<del>[^<\n]*</del>", re.I)
_MARKUP = re.compile(r"\*\*|__|~~|`|</?(?:b|i|u|strong|em)>", re.I)
# Ethiopic punctuation as its Latin counterpart ("ዋጋ፡ 300" reads as "ዋጋ: 300")
_ETHIOPIC = str.maketrans({"፡": ":", "፦": ":", "፥": ":", "፣": ",", "፤": ";", "።": "."})


def fold(text: str) -> str:
    """NFKC (look-alike letters and digits become plain ones), Ethiopic punctuation as Latin, no-break and
    odd spaces as spaces, ``\\r``
    dropped, struck-through text removed and markdown markers dropped; line breaks are kept."""
    text = unicodedata.normalize("NFKC", text).translate(_ETHIOPIC)
    text = text.replace("\r", "").replace("\t", " ")
    text = re.sub(r"[\u00A0\u2000-\u200A\u202F\u205F\u3000]", " ", text)
    text = _STRUCK.sub(" ", text)
    return _MARKUP.sub("", text)


def strip_symbols(text: str) -> str:
    """``text`` with emoji and pictographic bullets replaced by spaces."""
    return _SYMBOLS.sub(" ", text)


def squash(text: str) -> str:
    """Runs of white space as one space, trimmed."""
    return re.sub(r"\s+", " ", text).strip()
