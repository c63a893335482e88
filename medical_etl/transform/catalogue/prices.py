"""Read the offers of a post: each product offered at a price in birr, from any list format the channels use.

A post is read line by line (``line_no`` counts every line of the text, empty ones too). A price is an amount
with a mark that makes it one:

- a price mark before it: ``💵 330``, ``💰 22.50``, ``Price 5000``, ``ዋጋ: 450``, ``ETB 300``;
- a currency word after it: ``450birr``, ``1,500 ብር``, ``100 ETB``, ``85br``;
- the end of an item line after ``=``, leader dots or a colon: ``IV cannula 20g= 1450``, ``Vicryl 3/0 .. 1050``;
- a line holding nothing but the amount under an item (``       1450 &1500``), or the field after the expiry
  date of a ``stock | expiry | price`` row (``120 | 5/28 | 208``).

What is never a price: stock counts (``📦 105``), dates (``09/2028``, ``Jul-28``), sizes and pack sizes (``10*5``,
``12.5cm``, ``100ml``, ``of 100``), phone numbers, percentages, euro and dollar amounts, delivery and transport
fees, fee scales (``70 birr - 500 birr``), rent and totals, and every amount of a job advert, of a business for
sale and of a training advert. A struck-through old price (``~~200~~ 180``) is gone before reading (see
:func:`~medical_etl.transform.catalogue.text.fold`); a second amount for the same item (``1450 & 1500``,
``105 Birr [100 birr >4Ctn]``) and a tier line under an item that has its price (``With attachment 2,400 birr``,
``5box 💵22``) are alternatives, not offers.

The product of a price is the item text on its line before the price; when that names no product (``💵 115``,
``Price 5000 birr``, ``10*10=1100``) it is the nearest item line above, past detail lines (stock, expiry, origin)
and continued lines of the same item; a bare variant (``24G`` under ``IV CANULA``) is named with its header.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from medical_etl.transform.catalogue.text import fold, squash, strip_symbols

_MODULE_FILES = ("prices.py", "text.py")


def parser_version() -> str:
    """Changes whenever the reader's code changes: texts read by another version are read again."""
    here = Path(__file__).parent
    h = hashlib.sha256()
    for name in _MODULE_FILES:
        h.update((here / name).read_bytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Offer:
    line_no: int          # 1-based, over every line of the text
    match_no: int         # the offer's place among the line's prices
    product_text: str     # the product as the post names it, cleaned of emoji, bullets and price words
    price_birr: Decimal
    currency_text: str    # the currency as written: birr, br, etb, ብር, or birr when the mark says so
    source_line: str      # the line holding the price, folded


_L = r"A-Za-z\u1200-\u137F"     # letters: Latin and Ge'ez
_DIGIT = re.compile(r"[0-9]")
_MAX_LINE = 2000  # characters of a line read for prices (Telegram posts hold at most 4,096)
_NUM = r"(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]{1,2})?(?!,[0-9])"
_CUR = r"(?:birr|bir|brr|br|etb|ብር)"
# An amount must not touch another digit, a date or size separator, or a letter that makes it a size.
_BEFORE_OK = r"(?<![0-9/*×x\-])(?<![0-9][.,:])"
_UNIT = (r"(?:mg|mcg|µg|ug|g|gm|gms|gram|grams|kg|ml|mls|l|lt|ltr|litre|liter|cl|cc|cm|mm|m|meter|inch|iu|%|"
         r"pcs?|pieces?|tabs?|tablets?|caps?|capsules?|amps?|ampoules?|vials?|box(?:es)?|packs?|pk|pkt|ctn|"
         r"cartons?|strips?|sachets?|tests?|kits?|rolls?|pairs?|dozens?|bottles?|tubes?|bags?|sets?|units?|"
         r"doses?|puffs?|drops?|days?|months?|years?|yrs?|hours?|hrs?|mins?|gauge|fr|ch|g\b|x|[*×/]|"
         r"\s*[*×x]\s*[0-9]|\s*/\s*[0-9]|\s*-\s*[0-9]|-[" + _L + r"])")
_AMOUNT = re.compile(_BEFORE_OK + r"(" + _NUM + r")(?![0-9])")

_MARK_BEFORE = re.compile(r"(?:💵|💰|💲|\b(?:price|prize|cost|ዋጋ(?:ው)?|etb|birr|br)\b\.?)\s*(?:is|only|:|=|-|\|)?\s*$", re.I)
_CUR_AFTER = re.compile(r"^\s*(" + _CUR + r")(?![" + _L + r"])", re.I)
_UNIT_AFTER = re.compile(r"^\s?" + _UNIT, re.I)
_FOREIGN = re.compile(r"(?:€|\$|£|usd|eur|euro|dollars?|pounds?)", re.I)
_END_MARK = re.compile(r"(?:=|\.{2,}|…|:|-{1,2}|–)\s*$")

_DETAIL = re.compile(r"^\s*(?:[|¦]\s*)?(?:📦|📆|🗓|🗓️|📅|🕰|🕐|⏳|⌛|⏰|🏭|exp\b|exp\.|expiry|ex\s*:\s*d|ed\s*:|mfg|"
                     r"batch|lot\b|qty|quantity|stock|made in|origin|country)", re.I)
_STOCK_OR_DATE = re.compile(r"(?:📦|📆|🗓|📅|🕰|🕐|⏳|⌛|⏰)\s*[^\s" + _L + r"]*\s*(?:pcs?|pack|box|ctn|long)?", re.I)
_DATE = re.compile(r"\b(?:[0-9]{1,2}\s*[/-]\s*)?[0-9]{1,2}\s*[/-]\s*(?:[0-9]{4}|[0-9]{2})\b|"
                   r"\b[0-9]{1,2}\.[0-9]{1,2}\.(?:[0-9]{4}|[0-9]{2})\b|"
                   r"\b(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*[\s\-/.]*[0-9]{2,4}\b", re.I)

_RANGE = re.compile(r"[0-9]\s*" + _CUR + r"?\s*(?:-|–|to|እስከ)\s*[0-9]+\s*" + _CUR, re.I)
_JOB_POST = re.compile(r"(?:vac+an+c?y|\bjobs?\b|salary|hiring|recruit|ደመወዝ|ክፍት የስራ|የሥራ ማስታወቂያ|"
                       r"experience\s*:?\s*[0-9]+\s*(?:years?|yrs?)|\b[0-9]+\s*(?:years?|yrs)\s+(?:of\s+)?experience)", re.I)
_NOT_GOODS = re.compile(r"(?:pharmac\w*\s+(?:for\s+sale|to\s+be\s+sold)|(?:to\s+be\s+sold|for\s+sale)\s+pharmac|"
                        r"የሚሸጥ\s*ፋርማሲ|ፋርማሲ\s*ይሸጣል|\bfor\s+rent\b|የሚከራይ|training|ስልጠና|\bcourse\b|webinar|"
                        r"workshop|seminar|scholarship)", re.I)
# A line that names no product of its own: price words, quantities, tiers.
_FILLER = re.compile(r"\b(?:price|prize|cost|ዋጋ(?:ው)?|only|each|per|now|new|old|was|birr|br|etb|ብር|retail|wholesale|"
                     r"special|offer|just|at|for|is|the|of|with|limited|quantity|long|available|in stock|size|small|medium|large|xl|xxl)\b", re.I | re.X)
_TIER = re.compile(r"^(?:(?:with|without|w/o|plus|or|and|per|for|if|above|below|more than|less than)\b|[+&>]|w/|"
                   r"[0-9]+\s*(?:box|boxes|pcs?|packs?|pk|ctn|cartons?|strips?|tests?|amps?|vials?|dozens?|"
                   r"pieces?|units?|bottles?|and above|for)\b|[0-9]+\s*\+|/\s*[" + _L + r"]+$|"
                   r"(?:a|one|the|each)?\s*(?:box|boxes|strip|strips|pack|packs|carton|cartons|bottle|bottles|"
                   r"tube|tubes|piece|pieces|pcs|vial|vials|amp|amps|dozen|roll|rolls)$)", re.I)
_LEAD = re.compile(r"^[\s#*•:;,.|>=/\-_()\[\]~]+|^(?:[0-9]{1,3}\s*[.,)\-/]\s*)(?=[" + _L + r"(])|"
                   r"^[0-9]{1,2}(?=[A-Z][a-z])")
_TRAIL = re.compile(r"[\s#*•:;,.|>=/\-_(\[~&+—–]+$")
_UNITS = (r"mg|mcg|µg|ug|g|gm|gms|kg|ml|l|lt|ltr|cl|cc|cm|mm|m|iu|pcs?|tabs?|caps?|amps?|vials?|box(?:es)?|"
          r"packs?|pk|ctn|cartons?|strips?|tests?|kits?|rolls?|pairs?|bottles?|tubes?|bags?|sets?|units?|doses?|"
          r"fr|fg|ch|g|gauge")
_NUMERIC = re.compile(r"[0-9]")
_VARIANT_TOKEN = re.compile(r"[0-9.,/*×x+\-]*[0-9][0-9.,/*×x+\-]*(?:" + _UNITS + r"|[A-Za-z])?|(?:" + _UNITS + r")|[&,/|+\-]",
                            re.I)
_YEAR = re.compile(r"(?:19|20)[0-9]{2}")
_BARE = re.compile(r"[|:=\-\s]*" + _NUM + r"(?:\s*(?:&|/|\bor\b)\s*" + _NUM + r")*[\s.|]*")
_OLD_PRICE = re.compile(r"(?:old\s*price|was|before|regular\s*price|previous(?:ly)?|from)\s*[:=\-]?\s*$", re.I)
_FEE_WORDS = re.compile(r"(?:deliver|transport|shipping|\bfees?\b|\brent\b|\brental\b|total|salary|ደመወዝ|"
                        r"ትራንስፖርት|ማድረሻ|ዴሊቨሪ|ኪራይ|\bdeposit\b|\bcommission\b)", re.I)


def read_offers(text: str | None) -> list[Offer]:
    """The offers of one post, in the order written; ``[]`` for a post that offers nothing at a price."""
    if not text or not _DIGIT.search(text):
        return []
    lines = fold(text).split("\n")
    head = " ".join(line for line in lines[:6])
    if _JOB_POST.search(text) or _NOT_GOODS.search(head):
        return []
    reader = _Reader(lines)
    return reader.offers()


class _Reader:
    def __init__(self, lines: list[str]):
        self.lines = lines
        self.priced: set[int] = set()        # indexes of lines whose item got a price
        self.found: list[Offer] = []
        self._any_marked: bool | None = None
        # a bare amount on a line of its own is a price only in a post that marks its prices elsewhere
        self._marked: dict[int, list] = {}    # line index -> its prices without the bare-amount rule

    def offers(self) -> list[Offer]:
        seen: set[tuple[str, Decimal]] = set()
        for i, raw in enumerate(self.lines):
            if not raw.strip() or _RANGE.search(raw):
                continue
            if not _DIGIT.search(raw):
                continue
            prices = self._marked_prices(i) or (_prices_on(raw, True) if self._bare_line_allowed(i) else [])
            if not prices:
                continue
            start, end, amount, currency = prices[0]
            product = self._product_for(i, _product_text(raw[:start]))
            named = []
            if product is not None:
                named.append((product, amount, currency))
                self.priced.add(i)
            # more prices on the line: each after an item of its own ("Silk 2/0C 💵530 ✅Silk 2/0R 💵495",
            # "♤18G💵1400 ♤20G💵1450"); after nothing but "&" or "[" it is an alternative price
            for start, end2, amount, currency in prices[1:]:
                between = _product_text(raw[end:start])
                end = end2
                if not between or _TIER.match(between) or not _has_letters(between):
                    continue
                if _is_variant(between):
                    base = self._variant_base(i, raw)
                    if base is None:
                        continue
                    between = _with_variant(base, between)
                named.append((between, amount, currency))
            for match_no, (name, amount, currency) in enumerate(named, 1):
                key = (name.lower(), amount)
                if key not in seen:
                    seen.add(key)
                    self.found.append(Offer(i + 1, match_no, name, amount, currency, squash(raw)[:500]))
        return self.found

    def _marked_prices(self, i: int) -> list:
        """Line ``i``'s prices by their marks alone (no bare amounts), computed once per line."""
        if i not in self._marked:
            line = self.lines[i]
            self._marked[i] = _prices_on(line, False) if _DIGIT.search(line) else []
        return self._marked[i]

    def post_marks_prices(self) -> bool:
        """Whether any line of the post states a price by a mark (then a bare amount may be one too)."""
        if self._any_marked is None:
            self._any_marked = any(self._marked_prices(i) for i in range(len(self.lines)))
        return self._any_marked

    def _bare_line_allowed(self, i: int) -> bool:
        """A line of nothing but an amount is a price under an item line (not under another amount or a
        header of a list whose items carry their own prices)."""
        j = self._previous(i)
        return j is not None and self.post_marks_prices() and _has_words(_product_text(_without_details(self.lines[j])))

    def _previous(self, i: int) -> int | None:
        """The nearest non-empty line above ``i``."""
        j = i - 1
        while j >= 0 and not self.lines[j].strip():
            j -= 1
        return j if j >= 0 else None

    def _product_for(self, i: int, own: str | None) -> str | None:
        if own and _is_origin(own):
            own = None
        if own and _has_words(own) and not _is_variant(own):
            if _TIER.match(own) and self._item_above_priced(i):
                return None
            return self._with_continued(i, own)
        # no product of its own: a bare variant ("24G", "5box") or nothing but the price
        above = self._item_above(i)
        if own and _TIER.match(own) and above is not None and above in self.priced:
            return None
        if above is None:
            return None
        if above in self.priced and not own:
            return None  # a second amount under an item that already has its price
        name = self._with_continued(above, self._item_name(above) or "")
        if not name:
            return None
        self.priced.add(above)
        if own and _is_variant(own) and _has_letters(own):
            return _with_variant(name, own)
        return name

    def _item_name(self, j: int) -> str | None:
        """The item line ``j`` names: its text before its own first price, if it has one."""
        line = self.lines[j]
        marked = self._marked_prices(j)
        return _product_text(_without_details(line[:marked[0][0]] if marked else line))

    def _variant_base(self, i: int, line: str) -> str | None:
        """The item a line of variants (``♤18G💵1400 ♤20G💵1450``) belongs to: its own text before the first
        variant when it names one, else the item line above."""
        above = self._item_above(i)
        if above is None:
            return None
        return self._item_name(above)

    def _item_above_priced(self, i: int) -> bool:
        above = self._item_above(i)
        return above is not None and above in self.priced

    def _item_above(self, i: int, reach: int = 5) -> int | None:
        """The nearest line above ``i`` that names an item: past empty lines, detail lines (stock, expiry,
        origin) and lines of amounts; never past a blank gap of three lines."""
        j, blanks, steps = i - 1, 0, 0
        while j >= 0 and steps < reach:
            text = self.lines[j]
            if not text.strip():
                blanks += 1
                if blanks >= 3:
                    return None
                j -= 1
                continue
            steps += 1
            if _DETAIL.match(strip_symbols(text).strip()) or _DETAIL.match(text.strip()):
                j -= 1
                continue
            cleaned = _product_text(_without_details(text))
            if cleaned and _has_words(cleaned) and not _is_origin(cleaned):
                if self._marked_prices(j) and j not in self.priced:
                    return None  # an item line with a price that was not an offer (a fee, a range)
                return j
            j -= 1
        return None

    def _with_continued(self, i: int, own: str) -> str:
        """An item written over several lines (``🧊Clotrimazole vaginal`` / ``inserts 100mg(Clovagy`` /
        ``100)India 💵 85``): the lines above without a price of their own, up to the one that opens the item
        with a bullet, joined; a line that opens with a bullet is an item of its own."""
        if _opens_item(self.lines[i]):
            return own
        parts, j = [own], i - 1
        while j >= 0 and len(parts) < 4:
            text = self.lines[j]
            if not text.strip() or j in self.priced or self._marked_prices(j) or _DETAIL.match(text.strip()):
                break
            cleaned = _product_text(_without_details(text))
            if not cleaned:
                break
            parts.insert(0, cleaned)
            if _opens_item(text):
                return squash(" ".join(parts))
            j -= 1
        return own  # no opening line above: the line names its item alone


def _prices_on(line: str, bare_allowed: bool) -> list[tuple[int, int, Decimal, str]]:
    """The prices a line states: (where its amount starts, where it and its currency end, amount, currency
    as written)."""
    found: list[tuple[int, int, Decimal, str]] = []
    line = line[:_MAX_LINE]
    dates = [d.span() for d in _DATE.finditer(line)] if ("/" in line or "-" in line or "." in line) else []
    dated_row = "|" in line and bool(dates)
    # facts about the whole line, found once (per amount they would make a long line quadratic)
    letter = re.search(r"[" + _L + r"]", line)
    first_letter = letter.start() if letter else len(line)
    last_digit = max((m.start() for m in re.finditer(r"[0-9]", line)), default=-1)
    last_word = max((m.start() for m in re.finditer(r"[" + _L + r"]{3,}", strip_symbols(line))), default=-1)
    bare: bool | None = None
    for m in _AMOUNT.finditer(line):
        start, end = m.span(1)
        raw = m.group(1)
        digits = raw.replace(",", "").split(".")[0]
        if len(digits) > 7 or (len(digits) >= 9) or (digits.startswith("0") and len(digits) > 1):
            continue
        # the marks that matter sit right before or after the amount: look no further
        before, after = line[max(0, start - 40):start], line[end:end + 40]
        if _FOREIGN.search(before[-4:]) or _FOREIGN.match(after.strip()[:6] or " "):
            continue
        if any(a <= start < b or a < end <= b for a, b in dates):
            continue
        # a fee, rent, salary or total in the amount's own clause; an old price ("was 300", "old price 300")
        clause = re.split(r"[,;|()\[\]!]|\s[-–—]\s", line[max(0, start - 80):start])[-1]
        if _FEE_WORDS.search(clause) or _OLD_PRICE.search(before):
            continue
        cur = _CUR_AFTER.match(after)
        if cur:
            currency = cur.group(1).lower()
        elif _MARK_BEFORE.search(before):
            currency = "birr"
        elif _UNIT_AFTER.match(after) or _stock_marked(before):
            continue
        elif _END_MARK.search(before) and last_digit < end and last_word < end and (first_letter < start or bare_allowed):
            currency = "birr"
        elif dated_row and last_digit < end and last_word < end and _after_date_field(line[max(0, start - 60):start]):
            currency = "birr"
        elif bare_allowed and (bare if bare is not None else (bare := _is_bare_amount(squash(strip_symbols(line))))):
            currency = "birr"
        else:
            continue
        amount = Decimal(raw.replace(",", ""))
        if amount <= 0:
            continue
        stop = end + (cur.end() if cur else 0)
        found.append((start, stop, amount, currency))
    return found


def _stock_marked(before: str) -> bool:
    """The amount follows a stock or date mark (``📦 105``, ``🕰 08/28``) with nothing but spaces between."""
    if re.search(r"(?:📦|📆|🗓|📅|🕰|🕐|⏳|⌛|⏰|\bqty|\bstock|\bexp)[\s:.\-|]*$", before, re.I):
        return True
    # a phone number, call centre or web address: "📞9798", "Our call center: 9798", "site.com:7443"
    return bool(re.search(r"(?:📞|☎|📱|📲|\b(?:call|phone|tel|mob|mobile|contact|whats ?app|telegram|hotline|"
                          r"cent(?:er|re)|ስልክ|ይደውሉ)\b[^0-9]{0,20}|[a-z]:)$", before, re.I))


def _after_date_field(before: str) -> bool:
    fields = [f.strip() for f in before.split("|")]
    return len(fields) >= 3 and bool(_DATE.search(fields[-2])) and fields[-1] == ""


def _is_bare_amount(stripped: str) -> bool:
    """Nothing but an amount, or amounts joined by ``&``, ``/`` or ``or`` (alternatives: the first counts);
    not a year (``2024`` under an item is a date)."""
    if len(stripped) > 80 or _YEAR.fullmatch(stripped.strip(" .|:=-")):
        return False
    return bool(_BARE.fullmatch(stripped))


def _with_variant(name: str, variant: str) -> str:
    """``IV CANULA`` + ``20G``; a variant of the same shape ending the name is replaced (``IV CANULA 16G`` +
    ``18G`` -> ``IV CANULA 18G``)."""
    shape = re.fullmatch(r"[0-9.]+\s*([A-Za-z]{1,3})", variant.strip())
    if shape:
        name = re.sub(r"\s+[0-9.]+\s*" + re.escape(shape.group(1)) + r"$", "", name, flags=re.I)
    return squash(f"{name} {variant}")


def _without_details(line: str) -> str:
    """A line with its stock and expiry fields (``📦 100``, ``🕰 08/28``) removed."""
    return _STOCK_OR_DATE.sub(" ", line)


def _product_text(fragment: str) -> str | None:
    """The item text of a line fragment: emoji, bullets, numbering, stock and date fields, price words and
    trailing separators removed; None when nothing is left."""
    text = _DATE.sub(" ", _without_details(fragment))
    text = strip_symbols(text)
    text = re.sub(r"\.{2,}|…|_+", " ", text)
    text = re.sub(r"\s*\b(?:was|old\s*price|before|regular\s*price)\b.*$", "", text, flags=re.I)
    text = squash(text)
    for _ in range(2):
        text = _LEAD.sub("", text).strip()
        text = _TRAIL.sub("", text).strip()
        text = re.sub(r"^(?:price|prize|ዋጋ(?:ው)?)\s*[:=\-]?\s*|(?:\s+|^)(?:price|prize|ዋጋ(?:ው)?|only|for|at|is|"
                      r"new|now|birr|br|etb|ብር)\s*[:=\-]?$|\s*@$", "", text, flags=re.I).strip()
    return text or None


def _has_letters(text: str) -> bool:
    return bool(re.search(r"[" + _L + r"]", text))


def _has_words(text: str | None) -> bool:
    """Names something: a word of three or more letters that is no price word or quantity."""
    if not text:
        return False
    rest = _FILLER.sub(" ", text)
    return bool(re.search(r"[" + _L + r"]{3,}|[\u1200-\u137F]{2,}", rest))


def _is_variant(text: str) -> bool:
    """A size or pack variant that names no product by itself: ``24G``, ``20G``, ``100box``, ``100 test``,
    ``312.5mg``."""
    words = re.findall(r"[" + _L + r"]+", _FILLER.sub(" ", text))
    if not words:
        return True
    # token by token (one linear pass; a single pattern over the whole text can backtrack exponentially)
    tokens = [t for t in re.split(r"[\s()]+", text) if t]
    return any(_NUMERIC.search(t) for t in tokens) and all(_VARIANT_TOKEN.fullmatch(t) for t in tokens)


def _is_origin(text: str) -> bool:
    return bool(re.fullmatch(r"(?:made in\s+)?(?:india|china|egypt|turkey|kenya|ethiopia|germany|usa|uk|"
                             r"korea|pakistan|bangladesh|jordan|iran|italy|france|spain)\W*", text, re.I))


def _opens_item(line: str) -> bool:
    """The line starts an item: with a bullet, an emoji, a number or a hash mark."""
    s = line.lstrip()
    if not s:
        return False
    return bool(re.match(r"[#*•\-–>✓✔]|[0-9]{1,3}\s*[.,)/-]", s)) or s[0] != strip_symbols(s[0])
