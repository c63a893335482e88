"""Evaluate the catalogue (price reading and product resolution) on the hand-labelled posts of bench/eval/.

    python bench/eval_products.py [--shared ../shared] [--show-misses N]

The texts are read from ``../shared/datasets/telegram-medical-sample/messages/``; the labels
(``bench/eval/labels/*.csv``, rules in ``bench/eval/RULES.md``) name the offers each post of
``bench/eval/posts.csv`` makes. An offer read is correct when the post has a labelled offer at the same
price whose product it names (its words overlap the label's: rapidfuzz token_set_ratio >= 60, or the same
line); each label is matched at most once. Prints price precision and recall, generic accuracy on the
matched medicines, kind accuracy on the matched offers and the share of matched non-medicines given a
generic, and exits 1 when a target is missed.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

from rapidfuzz import fuzz

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medical_etl.transform.catalogue.identity import Resolver  # noqa: E402
from medical_etl.transform.catalogue.prices import read_offers  # noqa: E402

EVAL = REPO / "bench" / "eval"
TARGETS = {"precision": 0.97, "recall": 0.95, "generic_accuracy": 0.90, "kind_accuracy": 0.85}
MAX_FALSE_GENERICS = 0.05


def load(shared: Path):
    posts = {}
    with open(EVAL / "posts.csv", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            posts[(row["channel"], int(row["message_id"]))] = None
    texts = {}
    for channel in {c for c, _ in posts}:
        path = shared / "datasets" / "telegram-medical-sample" / "messages" / f"{channel}.json"
        for m in json.loads(path.read_text(encoding="utf-8")):
            texts[(channel, int(m["message_id"]))] = m.get("message_text") or ""
    labels = defaultdict(list)
    for path in sorted((EVAL / "labels").glob("*.csv")):
        with open(path, encoding="utf-8") as f:
            for row in csv.DictReader(f):
                key = (row["channel"], int(row["message_id"]))
                if key not in posts:
                    raise SystemExit(f"{path.name}: {key} is not in posts.csv")
                row["price_birr"] = Decimal(row["price_birr"])
                row["line"] = int(row["line"])
                labels[key].append(row)
    return {k: texts[k] for k in posts}, labels


def _similar(a: str, b: str) -> float:
    return fuzz.token_set_ratio(a.lower(), b.lower())


def evaluate(texts, labels, resolver: Resolver, show: int = 0) -> dict:
    n_read = n_labels = n_match = 0
    generic_ok = generic_n = kind_ok = false_generic = non_medicine = 0
    misses, extras, wrong = [], [], []
    for key, text in texts.items():
        offers, seen = [], set()
        for o in read_offers(text):  # as the mart keeps them: a product at one price once per post
            p = resolver.resolve(o.product_text)
            if (p.identity_key, o.price_birr) not in seen:
                seen.add((p.identity_key, o.price_birr))
                offers.append(o)
        gold = list(labels.get(key, []))
        n_read += len(offers)
        n_labels += len(gold)
        for o in offers:
            best, best_score = None, -1.0
            for g in gold:
                if g["price_birr"] != o.price_birr:
                    continue
                score = _similar(o.product_text, g["product"]) + (100 if g["line"] == o.line_no else 0)
                if score > best_score:
                    best, best_score = g, score
            if best is None or best_score < 60:
                extras.append((key, o.line_no, o.product_text, o.price_birr))
                continue
            gold.remove(best)
            n_match += 1
            p = resolver.resolve(o.product_text)
            kind_ok += p.product_kind == best["kind"]
            if p.product_kind != best["kind"]:
                wrong.append(("kind", o.product_text, p.product_kind, best["kind"]))
            if best["kind"] == "medicine" and best["generic"]:
                generic_n += 1
                generic_ok += p.generic_name == best["generic"]
                if p.generic_name != best["generic"]:
                    wrong.append(("generic", o.product_text, p.generic_name, best["generic"]))
            if best["kind"] != "medicine":
                non_medicine += 1
                false_generic += p.generic_name is not None
                if p.generic_name is not None:
                    wrong.append(("false generic", o.product_text, p.generic_name, best["kind"]))
        misses += [(key, g["line"], g["product"], g["price_birr"]) for g in gold]
    result = {
        "posts": len(texts), "labelled_offers": n_labels, "offers_read": n_read, "matched": n_match,
        "precision": n_match / n_read if n_read else 1.0,
        "recall": n_match / n_labels if n_labels else 1.0,
        "generic_accuracy": generic_ok / generic_n if generic_n else 1.0,
        "kind_accuracy": kind_ok / n_match if n_match else 1.0,
        "false_generic_share": false_generic / non_medicine if non_medicine else 0.0,
    }
    if show:
        for title, rows in (("missed", misses), ("not labelled", extras), ("wrong", wrong)):
            print(f"-- {title} ({len(rows)})")
            for r in rows[:show]:
                print("  ", *r)
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    ap.add_argument("--show-misses", type=int, default=0, metavar="N")
    args = ap.parse_args(argv)
    if not (args.shared / "datasets" / "telegram-medical-sample").is_dir():
        print(f"eval-products: {args.shared}/datasets/telegram-medical-sample is absent: nothing to evaluate")
        return 2
    texts, labels = load(args.shared)
    r = evaluate(texts, labels, Resolver(), args.show_misses)
    print(f"posts {r['posts']}, labelled offers {r['labelled_offers']}, offers read {r['offers_read']}, "
          f"matched {r['matched']}")
    ok = True
    for name, target in TARGETS.items():
        met = r[name] >= target
        ok &= met
        print(f"{name:18} {r[name]:.3f}  (target >= {target:.2f}) {'ok' if met else 'MISSED'}")
    met = r["false_generic_share"] <= MAX_FALSE_GENERICS
    ok &= met
    print(f"{'false_generics':18} {r['false_generic_share']:.3f}  (target <= {MAX_FALSE_GENERICS:.2f}) "
          f"{'ok' if met else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
