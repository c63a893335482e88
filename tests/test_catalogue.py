"""The catalogue: price reading and product resolution on real lines of ../shared (positives and negatives,
English and Amharic), and the stage that remembers what it read and resolved."""
from __future__ import annotations

import json
from decimal import Decimal

import pytest
from helpers import query

from medical_etl.db import conn_params
from medical_etl.transform import run_dbt_transformations
from medical_etl.transform.catalogue.identity import Resolver, normalise
from medical_etl.transform.catalogue.prices import read_offers
from medical_etl.transform.catalogue.stage import build_catalogue


@pytest.fixture(scope="module")
def resolver():
    return Resolver()


@pytest.fixture
def posts(shared_sample):
    out = {}
    for ch in ("tikvahpharma", "lobelia4cosmetics", "CheMed123"):
        for m in json.loads((shared_sample / "messages" / f"{ch}.json").read_text(encoding="utf-8")):
            out[(ch, m["message_id"])] = m.get("message_text") or ""
    return out


def offers_on(text: str) -> dict[int, list[tuple[str, Decimal]]]:
    by_line: dict[int, list] = {}
    for o in read_offers(text):
        by_line.setdefault(o.line_no, []).append((o.product_text, o.price_birr))
    return by_line


def prices_of(text: str) -> dict[str, list[Decimal]]:
    out: dict[str, list] = {}
    for o in read_offers(text):
        out.setdefault(o.product_text, []).append(o.price_birr)
    return out


def line_of(text: str, fragment: str) -> int:
    return next(i + 1 for i, line in enumerate(text.split("\n")) if fragment in line)


# --- prices on the list formats of the real posts ------------------------------------------------------

def test_detail_lines_between_product_and_price(posts):
    """``💊 AMYN, 100ml / Amoxacillin 250mg/5ml / 💵 115 / 📦 100 / 📆 09/ 2028`` and ``CLAVAMYN 312mg /
    📆 09/ 2027 / 💵 330``: the price takes the item above its stock and expiry lines."""
    got = prices_of(posts[("tikvahpharma", 188938)])
    assert got["AMYN, 100ml Amoxacillin 250mg/5ml"] == [115]  # an item over two lines
    assert got["CLAVAMYN 312mg"] == [330]
    assert got["Amoxa(amyn) 500mg"] == [115]  # "📦 105 💵 115": the stock count is no price
    assert got["Ors"] == [30] and got["Glucose injection 40%,20ml"] == [Decimal("22.50")]


def test_stock_expiry_price_rows(posts):
    """``N | expiry | Pbirr`` under each item (188936), and the bare last field of such a row."""
    text = posts[("tikvahpharma", 188936)]
    got = prices_of(text)
    assert got["SICABENZ | Benzoic acid + salicylic acid oint 15gm"] == [64]
    assert got["Ketoconazole Shampoo | Sicadruff"] == [208]  # "120 | 5/28 | 208": after the expiry field
    rows = offers_on(text)  # "600 | 05/2028 | 64birr": the stock count and the expiry are no prices
    assert [p for _, p in rows[line_of(text, "600 | 05/2028 | 64birr")]] == [64]
    assert [p for _, p in rows[line_of(text, "1000 | 5/2027 | 74birr")]] == [74]


def test_pipe_rows_and_equals_and_leader_dots(posts):
    assert prices_of(posts[("tikvahpharma", 188901)]) == {"H pylori Ag strip of 25pcs |Egens": [1690]}
    text = posts[("tikvahpharma", 188938)]
    got = prices_of(text)
    assert got["Cefalexin 500mg"] == [1100]          # "10*10=1100" under the item: a pack size, then the price
    assert got["IV cannula 20g"] == [1450]           # "1. IV cannula 20g= 1450"
    assert got["Vicryl,3 cutting"] == [1350]         # "Vicryl,3 cutting... 1350 birr"
    assert got["Cutgut, 3/0 cutting"] == [950]       # leader dots, no currency
    assert line_of(text, "plaster 10*5=") not in offers_on(text)  # "= 📦 180": a stock count
    assert not any(name.startswith("Manitol") for name in got)    # "👉Manitol 500ml =": no amount


def test_several_items_on_one_line_and_alternative_prices(posts):
    text = posts[("tikvahpharma", 188895)]
    got = offers_on(text)
    assert got[line_of(text, "Silk 2/0C")] == [("Silk 2/0C", 530), ("Silk 2/0R", 495)]
    assert got[line_of(text, "♤18G")] == [("IV CANULA 18G", 1400), ("IV CANULA 20G", 1450),
                                          ("IV CANULA 22G", 1500), ("IV CANULA 24G", 1600)]
    gloves = prices_of(posts[("tikvahpharma", 188938)])
    assert gloves["Surgical gloves"] == [1450]  # "Surgical gloves / 1450 &1500": the first amount only


def test_tier_prices_are_not_offers(posts):
    text = posts[("tikvahpharma", 188957)]
    got = offers_on(text)
    assert line_of(text, "With attachment") not in got
    assert all("5box" not in name for line in got.values() for name, _ in line)


def test_markdown_struck_through_and_lower_case_price():
    text = "3. Paracetamol 500mg tab price 1500\n**Omeprazole 20mg** ~~200~~ 180 birr\nORS sachet = 💵25"
    assert offers_on(text) == {1: [("Paracetamol 500mg tab", 1500)], 2: [("Omeprazole 20mg", 180)],
                               3: [("ORS sachet", 25)]}


def test_negatives_from_real_posts(posts):
    # delivery fee scales (English and Amharic), phone numbers, job adverts, a pharmacy for sale, a bank's port
    lobelia = offers_on(posts[("lobelia4cosmetics", 22905)])
    assert lobelia == {2: [("ENSURE 850GM", 5000)]}  # not "ከ70 - 500 ብር", not "70 birr - 500 birr"
    for key in (("tikvahpharma", 188963), ("tikvahpharma", 188929), ("tikvahpharma", 188961),
                ("tikvahpharma", 188807), ("CheMed123", 17), ("CheMed123", 25), ("CheMed123", 49)):
        assert read_offers(posts[key]) == [], key


def test_amharic_prices():
    text = "የሕፃናት ወተት 400ግ\nዋጋ 850 ብር\nአሞክሲሲሊን 500mg 1,200ብር\nማድረሻ 100 ብር"
    assert offers_on(text) == {2: [("የሕፃናት ወተት 400ግ", 850)], 3: [("አሞክሲሲሊን 500mg", 1200)]}


@pytest.mark.timeout(20)
@pytest.mark.parametrize("text", [
    "1x" * 40 + " Gloves 💵 200",                      # nested quantifiers once backtracked exponentially
    "Gauze 💵 100 " + "1x" * 40 + " Gloves 💵 200",
    "Gauze 💵 100\n1" + ",000" * 40 + " & 5 ~",
    "Item 💵 5\n" + "1 " * 2000,                        # many amounts on one line: linear, not quadratic
    "Item = " + "= 1 " * 1000,
])
def test_hostile_lines_are_read_in_bounded_time(text):
    read_offers(text * 2)


def test_old_and_new_prices_fees_in_a_clause_and_ethiopic_colons():
    assert prices_of("Amoxicillin 500mg was 300 birr now 250 birr") == {"Amoxicillin 500mg": [250]}
    assert prices_of("Amoxicillin 500mg\nOld price 300 birr\nNew price 250 birr") == {"Amoxicillin 500mg": [250]}
    assert prices_of("Amoxicillin 500mg Price: 450 birr, Delivery: 50 birr") == {"Amoxicillin 500mg": [450]}
    assert prices_of("Examination Gloves ዋጋ፡ 300 ብር") == {"Examination Gloves": [300]}
    assert prices_of("Omeprazole 20 mg 💵 95 ETB / strip, 900 ETB / box") == {"Omeprazole 20 mg": [95]}
    assert prices_of("HBsAg/Syphilis 💵 300") == {"HBsAg/Syphilis": [300]}  # no word cut short


def test_sizes_dates_euro_and_percent_are_no_price():
    text = "Gauze 10*5\n12.5cm bandage\nMinoxidil 5%\nExpiry 09/2028\nJul-28\nCream 100ml\nMask €15\n0911562031"
    assert read_offers(text) == []


# --- product identity ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text, generic", [
    ("AMVASC 5mg", "amlodipine"),
    ("Panadol", "paracetamol"),
    ("Augmentin 625mg", "amoxicillin + clavulanic acid"),
    ("Azitromicin 500", "azithromycin"),            # real misspellings (tikvahpharma)
    ("Metrendazol syrup", "metronidazole"),
    ("ketokonazol shampo", "ketoconazole"),
    ("Amoxa(amyn) 500mg", "amoxicillin"),
    ("Salbutamol 2mg/5ml syrup", "salbutamol"),    # the INN, not albuterol
    ("S𝑎𝑣𝑙𝑜𝑛3%", "cetrimide + chlorhexidine"),    # mathematical italic letters folded
    ("Ferrous sulfate + folic acid 200mg+0.4mg", "ferrous sulfate + folic acid"),
])
def test_generics(resolver, text, generic):
    p = resolver.resolve(text)
    assert (p.generic_name, p.product_kind) == (generic, "medicine")


@pytest.mark.parametrize("text, kind", [
    ("Examination Glove", "device"), ("IV cannula 20g", "device"), ("Urine bag", "device"),
    ("Vicryl 2/0 cutting", "device"), ("HBsAg strip of 50pcs (Egens)", "device"), ("24G", "other"),
    ("NAN LACTOSE FREE", "baby_food"), ("CERAVE MOISTURIZING CREAM 454g", "cosmetic"),
    ("LA ROCHE POSAY NIACINAMIDE SERUM", "cosmetic"), ("FERRERO CHOCOLATE 431gm", "other"),
])
def test_no_generic_for_devices_cosmetics_and_food(resolver, text, kind):
    p = resolver.resolve(text)
    assert p.product_kind == kind and p.generic_name is None, p


@pytest.mark.parametrize("text, generic", [
    ("Paracetamol 500mg 10x10 strip", "paracetamol"), ("Clotrimazole cream 20g tube", "clotrimazole"),
    ("Normal saline 0.9% 1000ml bag", "sodium chloride"),
])
def test_a_pack_word_does_not_make_a_medicine_a_device(resolver, text, generic):
    p = resolver.resolve(text)
    assert (p.product_kind, p.generic_name) == ("medicine", generic)


@pytest.mark.parametrize("text", ["Syrringe 5ml", "Ceramide cream", "Whey protein", "Glucose test strips"])
def test_misspelt_or_compound_non_drug_words_get_no_generic(resolver, text):
    assert resolver.resolve(text).generic_name is None


def test_a_drug_in_a_cosmetic_form_stays_a_medicine(resolver):
    p = resolver.resolve("Ketoconazole Shampoo 2%")
    assert (p.generic_name, p.product_kind, p.strength, p.dosage_form) == ("ketoconazole", "medicine", "2 %", "shampoo")


def test_two_spellings_of_one_generic_strength_and_form_are_one_product(resolver):
    a = resolver.resolve("Azitromicin 500mg tab")
    b = resolver.resolve("🧽Azithromycin tablet 500 mg")
    assert a.identity_key == b.identity_key == "medicine|azithromycin|500 mg|tablet"
    assert resolver.resolve("Azithromycin 250mg tab").identity_key != a.identity_key


@pytest.mark.parametrize("text, strength", [
    ("Amoxicillin 250mg/5ml susp", "250 mg/5 ml"), ("Glucose 40% inj 20ml", "40 %"),
    ("Ceftriaxone 1g inj", "1 g"), ("Clobetasole Cream 15gm", None), ("cephalexin 250/5ml", "250 mg/5 ml"),
])
def test_strength_normalised(resolver, text, strength):
    assert resolver.resolve(text).strength == strength


def test_normalise_folds_look_alikes_and_symbols():
    assert normalise("🧽S𝑎𝑣𝑙𝑜𝑛  3%") == normalise("Savlon 3%") == "savlon 3%"


# --- the stage: once per text and version, atomic per batch ---------------------------------------------

def _messages(conn, rows):
    from medical_etl.migrate import migrate

    migrate(conn)
    with conn.cursor() as cur:
        for channel, mid, text in rows:
            cur.execute("""INSERT INTO raw.telegram_messages (channel, message_id, message_date, message_text,
                                                              source_file, scraped_at)
                           VALUES (%s, %s, now(), %s, 'test', now())""", (channel, mid, text))
    conn.commit()


def test_each_text_read_and_each_product_resolved_once(settings, conn, posts):
    db = conn_params(settings)
    text = posts[("tikvahpharma", 188938)]
    _messages(conn, [("a", 1, text), ("b", 2, text), ("a", 3, "Panadol 500mg tab\nPrice 60 birr")])
    first = build_catalogue(db)
    assert first["texts_read"] == 2 and first["offers_found"] > 50  # the repost is one text
    assert first["products_resolved"] == query(conn, "SELECT count(DISTINCT product_text_key) FROM raw.catalogue_offers")[0][0]
    again = build_catalogue(db)
    assert (again["texts_read"], again["products_resolved"]) == (0, 0)
    _messages(conn, [("a", 4, "Panadol 500mg tab\nPrice 65 birr\nGlove 💵600")])  # one new text, one new product
    third = build_catalogue(db)
    assert (third["texts_read"], third["products_resolved"], third["products_remembered"]) == (1, 1, 1)


def test_crash_mid_read_then_rerun_leaves_the_rows_of_a_clean_run(settings, conn, posts, monkeypatch):
    db = conn_params(settings)
    texts = [t for t in posts.values() if t][:60]
    _messages(conn, [("c", i, t) for i, t in enumerate(texts)])
    import medical_etl.transform.catalogue.stage as stage

    real, calls = stage._write_batch, []

    def failing(cur, parser, pending, resolving):
        calls.append(len(pending))
        if len(calls) == 3:
            raise RuntimeError("killed mid-run")
        return real(cur, parser, pending, resolving)

    monkeypatch.setattr(stage, "_write_batch", failing)
    with pytest.raises(RuntimeError):
        build_catalogue(db, batch=10)
    done = query(conn, "SELECT count(*) FROM raw.catalogue_texts")[0][0]
    assert 0 < done < len(set(texts))  # whole batches only
    monkeypatch.setattr(stage, "_write_batch", real)
    build_catalogue(db, batch=10)
    got = query(conn, "SELECT text_hash, line_no, match_no, product_text, price_birr FROM raw.catalogue_offers ORDER BY 1, 2, 3")
    expected = sorted((h, o.line_no, o.match_no, o.product_text, o.price_birr)
                      for h, t in query(conn, "SELECT DISTINCT md5(message_text), message_text FROM raw.telegram_messages")
                      for o in read_offers(t))
    assert got == expected


def test_crash_mid_resolution_on_a_later_run_loses_no_resolution(settings, conn, posts, monkeypatch):
    db = conn_params(settings)
    _messages(conn, [("e", 1, "Panadol 500mg tab\nPrice 60 birr")])
    build_catalogue(db)  # the state now exists: later runs resolve per batch
    texts = [t for t in posts.values() if t and read_offers(t)][:12]
    _messages(conn, [("e", 10 + i, t) for i, t in enumerate(texts)])
    import medical_etl.transform.catalogue.identity as identity

    real, calls = identity.Resolver.resolve, []

    def failing(self, text):
        calls.append(text)
        if len(calls) == 40:
            raise RuntimeError("killed mid-resolution")
        return real(self, text)

    monkeypatch.setattr(identity.Resolver, "resolve", failing)
    with pytest.raises(RuntimeError):
        build_catalogue(db, batch=3)
    monkeypatch.setattr(identity.Resolver, "resolve", real)
    build_catalogue(db, batch=3)
    assert query(conn, """SELECT count(DISTINCT o.product_text_key) FROM raw.catalogue_offers o
                          LEFT JOIN raw.product_resolutions r USING (product_text_key)
                          WHERE r.product_text_key IS NULL""")[0][0] == 0


def test_a_text_re_read_with_no_offer_left_loses_its_price_rows(settings, conn):
    """A new reader version finds nothing in a text it priced before: the next incremental build drops the
    post's price rows and its price count (and the relationships test stays green)."""
    db = conn_params(settings)
    _messages(conn, [("f", 1, "Panadol 500mg tab\nPrice 60 birr"), ("f", 2, "ENSURE 850GM\nPrice 5000 birr")])
    assert run_dbt_transformations(db, check_freshness=False)["status"] == "success"
    assert query(conn, "SELECT count(*) FROM marts.fct_product_prices WHERE message_id = 1")[0][0] == 1
    with conn.cursor() as cur:  # what a reader version that reads no offer in post 1 would leave
        cur.execute("""DELETE FROM raw.catalogue_offers WHERE text_hash = md5('Panadol 500mg tab' || chr(10) || 'Price 60 birr')""")
        cur.execute("""UPDATE raw.catalogue_texts SET offers = 0, read_at = clock_timestamp()
                       WHERE text_hash = md5('Panadol 500mg tab' || chr(10) || 'Price 60 birr')""")
    conn.commit()
    s = run_dbt_transformations(db, check_freshness=False)
    assert s["status"] == "success", s["failing_nodes"]
    assert query(conn, "SELECT count(*) FROM marts.fct_product_prices WHERE message_id = 1")[0][0] == 0
    assert query(conn, "SELECT price_count FROM marts.fct_messages WHERE message_id = 1")[0][0] == 0
    assert query(conn, "SELECT count(*) FROM marts.fct_product_prices WHERE message_id = 2")[0][0] == 1


def test_full_refresh_after_nothing_changed_re_resolves_nothing(settings, conn, posts):
    db = conn_params(settings)
    _messages(conn, [("d", 1, posts[("tikvahpharma", 188879)]), ("d", 2, posts[("lobelia4cosmetics", 22905)])])
    first = run_dbt_transformations(db, check_freshness=False)
    assert first["status"] == "success", first["failing_nodes"]
    assert first["catalogue"]["texts_read"] == 2
    full = run_dbt_transformations(db, full_refresh=True, check_freshness=False)
    assert full["status"] == "success" and full["catalogue"]["texts_read"] == 0
    assert full["catalogue"]["products_resolved"] == 0
    # every price row points at its product, and the two spellings of one amlodipine are one product
    assert query(conn, """SELECT count(*) FROM marts.fct_product_prices f
                          LEFT JOIN marts.dim_products d USING (product_key) WHERE d.product_key IS NULL""")[0][0] == 0
    assert query(conn, "SELECT product_name FROM marts.dim_products WHERE generic_name = 'amlodipine' ORDER BY 1") == [
        ("Amlodipine 10 mg tablet",), ("Amlodipine 5 mg tablet",)]
