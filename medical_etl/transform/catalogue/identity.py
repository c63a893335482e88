"""Product identity: what a product text names (``AMVASC 5mg`` -> amlodipine 5 mg), with the precision control
that a drug dictionary needs.

The drug names come from ``drug-named-entity-recognition`` (its DrugBank/MeSH-derived dictionary of generics,
brands and synonyms, read offline); ``lexicon.csv`` beside this module holds what it does not know or says
otherwise (WHO INN spellings, local brands, the words that mark a device, a cosmetic or a food). Resolution:

1. the text is folded (NFKC, so ``S𝑎𝑣𝑙𝑜𝑛`` is ``Savlon``), lower-cased and split into words, digits apart
   from letters (``AZITHRAA500`` -> ``azithraa 500``);
2. exact names first, longest first (three words, two, one): the lexicon's brands, then the dictionary's
   generics, brands and synonyms; a dictionary entry counts only where it is a drug (a DrugBank, MedlinePlus or
   NHS entry, not a MeSH class like "Penicillins" or "Sunscreening Agents") and the word is not one of the
   lexicon's ``not_drug`` words (``caps``, ``citrate``: salts and forms alone are no drug);
3. a word left over may be a misspelt generic (``Azitromicin``, ``Metrendazol``): rapidfuzz ratio >= 80 against
   the generics of the same first letter, for words of six letters or more that are no device, cosmetic or
   food word nor close to one (``Syrringe``), and never in a text that names a device or a food;
4. the names found become WHO INNs (``acetaminophen`` -> ``paracetamol``), a combination its INNs sorted and
   joined by `` + ``;
5. the kind: a device word makes a device (a pack word such as ``strip``, ``tube`` or ``bag`` only when no
   generic is named: ``Paracetamol 500mg 10x10 strip`` is a medicine), a baby-food word baby food; a generic
   makes a medicine unless a
   cosmetic word is there too and the drug is no topical drug (``ketoconazole shampoo`` stays a medicine,
   a niacinamide serum is a cosmetic); a food word makes ``other``, a cosmetic word a cosmetic, a dosage form
   or a strength a medicine (generic unknown), anything else ``other``. Only a medicine has a generic.

The same generic, strength and dosage form is one product (``identity_key``) whoever posts it and however it is
spelt; any other product is its folded name.
"""
from __future__ import annotations

import csv
import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import version
from pathlib import Path

from medical_etl.transform.catalogue.text import fold, squash, strip_symbols

HERE = Path(__file__).parent
LEXICON = HERE / "lexicon.csv"
KINDS = ("medicine", "cosmetic", "baby_food", "device", "other")

_FORMS = [  # (pattern, dosage form), first match wins
    (r"\b(?:eye|ear|nasal|nose)\s*drops?\b|\bdrops?\b", "drops"),
    (r"\binhaler\b|\bpuffs?\b|\binh\b", "inhaler"),
    (r"\binj\w*\b|\binjection\b|\bampoules?\b|\bamps?\b|\bvials?\b|\biv\s*fluid\b|\binfusion\b", "injection"),
    (r"\bsusp\w*\b|\bdry\s*powder\b", "suspension"),
    (r"\bsyrup\b|\bsyr\b|\bsyp\b|\belixir\b", "syrup"),
    (r"\bcaps?\b|\bcapsules?\b|\bsoftgels?\b", "capsule"),
    (r"\btabs?\b|\btablets?\b|\bcaplets?\b|\bchewable\b", "tablet"),
    (r"\bointment\b|\boint\b", "ointment"),
    (r"\bcream\b", "cream"),
    (r"\bgel\b", "gel"),
    (r"\blotion\b", "lotion"),
    (r"\bshampoo\b", "shampoo"),
    (r"\bsuppositor\w*\b|\bsupp\b", "suppository"),
    (r"\bpessar\w*\b|\bvaginal\s*(?:inserts?|tabs?|tablets?)\b", "pessary"),
    (r"\bspray\b", "spray"),
    (r"\bsachets?\b", "sachet"),
    (r"\blozenges?\b", "lozenge"),
    (r"\bsolution\b|\bsol\b|\bmouth\s*wash\b", "solution"),
    (r"\bpowder\b", "powder"),
]
_MASS = r"(?:mg|mcg|µg|ug|g|gm|gram|iu|i\.u\.|units?|%)"
_STRENGTH = re.compile(
    r"(?<![0-9.,])([0-9]+(?:[.,][0-9]+)?)\s*(" + _MASS + r")(?![a-z])"
    r"(?:\s*/\s*([0-9]+(?:\.[0-9]+)?)?\s*(ml|l|g|tab|dose|puff)\b)?", re.I)
_CONCENTRATION = re.compile(r"(?<![0-9.,])([0-9]+(?:\.[0-9]+)?)\s*/\s*([0-9]+(?:\.[0-9]+)?)\s*ml\b", re.I)
_UNIT_NAMES = {"gm": "g", "gram": "g", "µg": "mcg", "ug": "mcg", "i.u.": "iu", "unit": "iu", "units": "iu"}


@dataclass(frozen=True)
class Product:
    product_name: str          # a clean display name
    generic_name: str | None   # WHO INN(s), lower case, ' + ' between; medicines only
    strength: str | None       # "500 mg", "250 mg/5 ml", "40 %"
    dosage_form: str | None
    product_kind: str
    identity_key: str          # equal for texts that name the same product
    match: str                 # how the generic was found: exact, lexicon, fuzzy or none


def normalise(text: str) -> str:
    """The text as resolution (and the remembered resolutions' key) reads it: folded, symbols gone, lower
    case, one space between words."""
    return squash(strip_symbols(fold(text)).lower())


def _words(text: str) -> list[str]:
    t = re.sub(r"(?<=[a-z]{2})(?=[0-9])|(?<=[0-9])(?=[a-z]{3,})", " ", text)
    t = re.sub(r"[^a-z0-9%.+&/\u1200-\u137F-]+", " ", t)
    t = re.sub(r"(?<![0-9])[.](?![0-9])|(?<=[a-z])-(?=\s|$)|(?<=\s)-", " ", t)
    return [w for w in re.split(r"[\s/+&]+", t) if w and w != "-"]


def _key(name: str) -> str:
    return squash(re.sub(r"[-_]", " ", name.lower()))


@lru_cache(maxsize=1)
def _lexicon() -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    with open(LEXICON, encoding="utf-8") as f:
        rows = [line for line in f if not line.startswith("#")]
    for row in csv.DictReader(rows):
        out.setdefault(row["meaning"], {})[_key(row["term"])] = row["value"].strip()
    return out


def resolver_version() -> str:
    """Changes with this module, the price words it shares, the lexicon and the dictionary's version:
    a resolution made by another version is made again."""
    h = hashlib.sha256(version("drug-named-entity-recognition").encode())
    for path in (Path(__file__), HERE / "text.py", LEXICON):
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


class Resolver:
    """Resolves product texts; building one reads the drug dictionary (a few seconds), so build it once and
    only when there is something to resolve."""

    def __init__(self):
        from drug_named_entity_recognition import drugs_finder as dictionary

        lex = _lexicon()
        self.inn = lex.get("inn", {})
        self.not_drug = set(lex.get("not_drug", {}))
        self.topical = set(lex.get("topical", {}))
        self.kind_words = {k: set(lex.get(k, {})) for k in ("device", "device_pack", "cosmetic", "baby_food", "food",
                                                             "other", "medicine")}
        self.vocabulary = set().union(*(v for k, v in self.kind_words.items() if k != "medicine"))
        self.vocabulary_words = sorted(w for w in self.vocabulary if " " not in w and len(w) >= 5)
        names: dict[str, str] = {}
        data = dictionary.drug_canonical_to_data
        drugs = {c for c, d in data.items() if d.get("drugbank_id") or d.get("medline_plus_id") or d.get("nhs_url")}
        drugs |= set(self.inn)
        for canonical in drugs:
            names.setdefault(_key(canonical), canonical)
        self.drugs = {_key(c): c.lower() for c in drugs}  # lookup key -> the name as written (hyphens kept)
        for variant, canonicals in dictionary.drug_variant_to_canonical.items():
            usable = [c for c in canonicals if c in drugs]
            if usable and len(variant) >= 4:
                names.setdefault(_key(variant), usable[0])
        for term, generic in lex.get("brand", {}).items():
            names[term] = generic
        food = self.kind_words["food"] | self.kind_words["other"]
        self.names = {k: v for k, v in names.items() if k not in self.not_drug and k not in self.vocabulary
                      and not food & set(k.split())}  # "whey protein" is a food whatever a dictionary says
        # what a misspelt word may be: a generic of one or two words, or a brand of the lexicon
        self.fuzzy_generic: dict[str, str] = {}
        for name in set(self.drugs) | set(self.inn.values()):
            self.fuzzy_generic[name] = name
        self.fuzzy_generic.update({k: v for k, v in lex.get("brand", {}).items() if v})
        self.fuzzy_choices: dict[str, list[str]] = {}  # by first letter
        for name in self.fuzzy_generic:
            if re.fullmatch(r"[a-z]{6,}|[a-z]{4,} [a-z]{4,}", name):
                self.fuzzy_choices.setdefault(name[0], []).append(name)
        self.single_generics = sorted(n for n in self.drugs if re.fullmatch(r"[a-z]{8,}", n))

    def _inn(self, canonical: str) -> str:
        name = _key(canonical)
        if name in self.inn:
            return self.inn[name]
        written = self.drugs.get(name, canonical.lower())
        # "clotrimazole vaginal", "tramadol hydrochloride": the drug is the base where the base is one
        base = re.sub(r" (?:vaginal|topical|oral|ophthalmic|otic|nasal|injection|hydrochloride|hcl|sodium|"
                      r"potassium|calcium|sulfate|maleate|mesylate|besylate|citrate|acetate|tartrate)$", "", name)
        if base != name and base in self.drugs:
            return self.inn.get(base, self.drugs[base])
        return written

    def resolve(self, text: str) -> Product:
        norm = normalise(text)
        words = _words(norm)
        kinds = self._kind_words(words)
        found, used, match = self._exact(words)
        if not kinds - {"cosmetic", "medicine", "device_pack"}:
            fuzzy = self._fuzzy([w for i, w in enumerate(words) if i not in used],
                                bool(_dosage_form(norm) or _strength(norm)))
            if fuzzy:
                found += fuzzy
                match = match if match != "none" else "fuzzy"
        generics = sorted({p for g in found for p in self._inn(g).split(" + ")})
        generic = " + ".join(generics) if generics else None
        form = _dosage_form(norm)
        strength = _strength(norm)
        kind = self._kind(kinds, generics, form, strength)
        if kind != "medicine":
            generic, match = None, "none"
        name = _display(text)
        if generic:
            key = "|".join(["medicine", generic, strength or "", form or ""])
        else:
            key = "|".join([kind, " ".join(words)])
        return Product(name, generic, strength, form, kind, key, match)

    def _kind_words(self, words: list[str]) -> set[str]:
        words = [p for w in words for p in w.split("-") if p]
        grams = set(words) | {" ".join(words[i:i + 2]) for i in range(len(words) - 1)}
        return {k for k, terms in self.kind_words.items() if grams & terms}

    def _exact(self, words: list[str]) -> tuple[list[str], set[int], str]:
        found, used, match = [], set(), "none"
        for n in (3, 2, 1):
            for i in range(len(words) - n + 1):
                span = range(i, i + n)
                if used & set(span):
                    continue
                gram = " ".join(words[i:i + n])
                if n == 1 and (len(gram) < 3 or not re.search("[a-z]", gram)):
                    continue
                generic = self.names.get(gram)
                if generic is None and "-" in gram:
                    generic = self.names.get(gram.replace("-", " "))
                if generic is not None:
                    # a lexicon brand with no generic ("vitamin b complex"): a medicine, its words used up
                    if generic:
                        found.append(generic)
                        match = "exact"
                    used |= set(span)
        return found, used, match

    def _fuzzy(self, words: list[str], medicine_signal: bool) -> list[str]:
        """Generics for misspelt words: a pair of words against two-word generics (``povidin iodin``), then
        single words; with a dosage form or strength in the text, also an abbreviation that begins exactly
        one generic (``Atorva 20mg``)."""
        from rapidfuzz import fuzz, process

        def usable(w: str, n: int) -> bool:
            return len(w) >= n and w.isalpha() and w.isascii() and w not in self.vocabulary and w not in self.not_drug

        out, done = [], set()
        for i in range(len(words) - 1):
            if usable(words[i], 4) and usable(words[i + 1], 4):
                pair = f"{words[i]} {words[i + 1]}"
                hit = process.extractOne(pair, self.fuzzy_choices.get(pair[0], []), scorer=fuzz.ratio,
                                         score_cutoff=85)
                if hit and " " in hit[0]:
                    out.append(self.fuzzy_generic[hit[0]])
                    done |= {i, i + 1}
        for i, w in enumerate(words):
            if i in done or not usable(w, 5):
                continue
            choices = self.fuzzy_choices.get(w[0], [])
            hit = process.extractOne(w, choices, scorer=fuzz.ratio, score_cutoff=81) if len(w) >= 6 else None
            # a misspelt device, cosmetic or food word is that word, not a drug ("syrringe", not syringate)
            near = process.extractOne(w, self.vocabulary_words, scorer=fuzz.ratio) if hit else None
            if near and near[1] >= hit[1]:
                continue
            if hit and abs(len(hit[0]) - len(w)) <= 3:
                out.append(self.fuzzy_generic[hit[0]])
            elif medicine_signal and len(w) >= 5:
                starts = [g for g in self.single_generics if g.startswith(w)]
                if len(starts) == 1:
                    out.append(starts[0])
        return out

    def _kind(self, kinds: set[str], generics: list[str], form: str | None, strength: str | None) -> str:
        if "device" in kinds or ("device_pack" in kinds and not generics):
            return "device"
        if "baby_food" in kinds:
            return "baby_food"
        if generics:
            if "cosmetic" in kinds and not any(g in self.topical for g in generics):
                return "cosmetic"
            return "medicine"
        if kinds & {"food", "other"}:
            return "other"
        if "cosmetic" in kinds:
            return "cosmetic"
        if "medicine" in kinds or form in ("tablet", "capsule", "syrup", "suspension", "injection", "ointment", "drops", "inhaler",
                    "suppository", "pessary", "sachet", "lozenge") or (strength and "mg" in strength):
            return "medicine"
        return "other"


def _dosage_form(norm: str) -> str | None:
    for pattern, form in _FORMS:
        if re.search(pattern, norm):
            return form
    return None


def _number(s: str) -> str:
    s = s.replace(",", ".")
    return s.rstrip("0").rstrip(".") if "." in s else s


def _strength(norm: str) -> str | None:
    """The strength, normalised: ``500 mg``, ``250 mg/5 ml``, ``40 %``, several joined by `` + ``. A volume or
    a pack weight (``100ml``, ``15gm`` of a cream) is no strength; grams count up to 2 g (``1g`` ceftriaxone)."""
    parts = []
    for m in _STRENGTH.finditer(norm):
        value, unit, per_value, per_unit = m.groups()
        unit = _UNIT_NAMES.get(unit.lower(), unit.lower())
        if unit == "g" and float(value.replace(",", ".")) > 2:
            continue
        s = f"{_number(value)} {unit}"
        if per_unit:
            s += f"/{_number(per_value) + ' ' if per_value else ''}{per_unit.lower()}"
        parts.append(s)
    if not parts:
        m = _CONCENTRATION.search(norm)  # "125/5ml": mg understood
        if m:
            parts.append(f"{_number(m.group(1))} mg/{_number(m.group(2))} ml")
    return " + ".join(dict.fromkeys(parts)) or None


def _display(text: str) -> str:
    """The product text as a person would write it: folded, symbols and bullets gone, one space between
    words, at most 200 characters."""
    name = squash(strip_symbols(fold(text)))
    name = re.sub(r"^[\s#*•:;,.|>=/\-]+|[\s#*•:;,.|>=/(\-]+$", "", name)
    return name[:200] or text[:200]
