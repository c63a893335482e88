import ast
import csv
import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_MODEL, query

from medical_etl import enrich as enrich_mod
from medical_etl.enrich import EnrichError, Photo, _infer, load_model, run_yolo_enrichment
from medical_etl.images import decode
from medical_etl.load import load_raw_to_postgres
from medical_etl.scrape import scrape_telegram_data
from medical_etl.standin import StandInClient, read_message_list
from medical_etl.transform import run_dbt_transformations

CHANNELS = ["CheMed123", "lobelia4cosmetics", "tikvahpharma"]


@pytest.fixture(scope="module")
def model():
    if not SHARED_MODEL.is_file():
        pytest.skip(f"shared model not present at {SHARED_MODEL}")
    return load_model(str(SHARED_MODEL), "cpu")


def assets():
    import ultralytics

    return Path(ultralytics.__file__).parent / "assets"


def classes(m, path: Path) -> list[str]:
    out = _infer(m, (Photo("x", 1, str(path)), decode(path)), dict(conf=0.25, iou=0.7, imgsz=640, device="cpu"))
    return [o[1] for o in out.objects]


def test_bus_and_zidane_with_real_weights(model):
    bus = classes(model, assets() / "bus.jpg")
    assert bus.count("person") >= 4 and "bus" in bus
    assert classes(model, assets() / "zidane.jpg").count("person") == 2


@pytest.fixture
def enriched_lake(settings, shared_sample):
    posts = read_message_list(shared_sample / "messages", shared_sample / "images")
    scrape_telegram_data(StandInClient(posts), CHANNELS, settings.raw_data_path)
    load_raw_to_postgres(settings, settings.raw_data_path)
    run_dbt_transformations(settings, check_freshness=False)
    return settings



def test_sample_agrees_with_reference_and_rerun_does_nothing(enriched_lake, conn, shared_sample, monkeypatch):
    s = run_yolo_enrichment(enriched_lake, enriched_lake.raw_data_path, model=str(SHARED_MODEL))
    assert s["photos_analysed"] == 197 and s["unreadable_photos"] == 3
    assert s["unreadable_reasons"] == {"a video (MP4/MOV)": 3}
    assert s["objects_found"] > 250 and s["per_class"]["person"] > 0 and s["photos_per_second"] > 0
    assert s["dbt"]["status"] == "success" and s["dbt"]["tests_failed"] == 0
    ours = {}
    for ch, mid, cls in query(conn, "SELECT channel, message_id, class_name FROM raw.image_detections"):
        ours.setdefault((ch, mid), set()).add(cls)
    readable = {(ch, mid) for ch, mid in query(conn, "SELECT channel, message_id FROM raw.image_analyses "
                                                 "WHERE status <> 'unreadable'")}
    assert len(readable) == 194
    agree = 0
    with open(shared_sample / "reference_yolov8n_detections.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            key = (row["channel_name"], int(row["message_id"]))
            if key in readable:
                ref = {d["class"] for d in ast.literal_eval(row["detections_json"])}
                agree += ref == ours.get(key, set())
    assert agree / len(readable) >= 0.70, agree

    # the re-run does no inference and adds nothing
    def no_inference(*a, **k):
        raise AssertionError("inference on a re-run")

    monkeypatch.setattr(enrich_mod, "_infer", no_inference)
    monkeypatch.setattr(enrich_mod, "load_model", no_inference)
    again = run_yolo_enrichment(enriched_lake, enriched_lake.raw_data_path, model=str(SHARED_MODEL),
                                build_models=False)
    assert again["photos_to_analyse"] == 0 and again["already_analysed"] == 197

    # categories in dbt follow the rule over the detections and the product-like seed
    product_like = {r[0] for r in query(conn, "SELECT class_name FROM marts.product_like_classes")}
    assert {"bottle", "cup", "bowl", "vase"} <= product_like
    cats = dict(((ch, mid), c) for ch, mid, c in query(
        conn, "SELECT channel_username, message_id, image_category FROM marts.fct_image_categories"))
    assert len(cats) == 194
    for key in readable:
        found = ours.get(key, set())
        person, product = "person" in found, bool(found & product_like)
        expected = ("promotional" if person and product else "product_display" if product
                    else "lifestyle" if person else "other")
        assert cats[key] == expected, (key, found)
    assert query(conn, "SELECT count(*) FROM marts.fct_image_detections")[0][0] == s["objects_found"]


def test_bad_photos_are_recorded_unreadable_others_go_on(settings, conn, tmp_path):
    import cv2

    lake = settings.raw_data_path
    (lake / "images" / "CheMed123").mkdir(parents=True)
    good = cv2.imread(str(assets() / "bus.jpg"))
    ok, jpg = cv2.imencode(".jpg", good)
    (lake / "images/CheMed123/1.jpg").write_bytes(jpg.tobytes())
    (lake / "images/CheMed123/2.jpg").write_bytes(jpg.tobytes()[: len(jpg) // 2])  # truncated
    (lake / "images/CheMed123/3.jpg").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 500)  # a video
    msgs = [{"channel_username": "CheMed123", "message_id": i, "date": "2026-01-10T08:00:00+00:00",
             "text": "", "image_path": f"images/CheMed123/{i}.jpg", "media_type": "photo"} for i in (1, 2, 3, 4)]
    d = lake / "telegram_messages" / "2026-01-10"
    d.mkdir(parents=True)
    (d / "CheMed123.json").write_text(json.dumps(msgs))
    load_raw_to_postgres(settings, lake)
    s = run_yolo_enrichment(settings, lake, model=str(SHARED_MODEL), build_models=False)
    assert s["photos_analysed"] == 4 and s["unreadable_photos"] == 3
    rows = dict((mid, (st, reason)) for mid, st, reason in query(
        conn, "SELECT message_id, status, reason FROM raw.image_analyses"))
    assert rows[1][0] == "ok"
    assert rows[2] == ("unreadable", "truncated JPEG (no end-of-image marker)")
    assert rows[3] == ("unreadable", "a video (MP4/MOV): unrecognised image format")
    assert rows[4] == ("unreadable", "file not found")
    # unreadable photos are not retried forever
    assert run_yolo_enrichment(settings, lake, model=str(SHARED_MODEL), build_models=False)["photos_to_analyse"] == 0


def test_identical_photos_are_analysed_once(settings, conn, monkeypatch):
    import cv2

    lake = settings.raw_data_path
    (lake / "images" / "CheMed123").mkdir(parents=True)
    ok, jpg = cv2.imencode(".jpg", cv2.imread(str(assets() / "bus.jpg")))
    for i in (1, 2, 3):  # 2 and 3 repost 1's photo
        (lake / f"images/CheMed123/{i}.jpg").write_bytes(jpg.tobytes())

    def messages(ids):
        d = lake / "telegram_messages" / "2026-01-10"
        d.mkdir(parents=True, exist_ok=True)
        (d / "CheMed123.json").write_text(json.dumps([
            {"channel_username": "CheMed123", "message_id": i, "date": "2026-01-10T08:00:00+00:00", "text": "",
             "image_path": f"images/CheMed123/{i}.jpg", "media_type": "photo"} for i in ids]))
        load_raw_to_postgres(settings, lake)

    messages([1, 2])
    calls = {"n": 0}
    real = enrich_mod._infer

    def counting(m, item, opts):
        calls["n"] += item[1].image is not None
        return real(m, item, opts)

    monkeypatch.setattr(enrich_mod, "_infer", counting)
    s = run_yolo_enrichment(settings, lake, model=str(SHARED_MODEL), build_models=False)
    assert s["photos_analysed"] == 2 and s["duplicates_reused"] == 1 and calls["n"] == 1
    messages([1, 2, 3])  # a later repost: its results come from the database
    s = run_yolo_enrichment(settings, lake, model=str(SHARED_MODEL), build_models=False)
    assert s["photos_analysed"] == 1 and s["duplicates_reused"] == 1 and calls["n"] == 1
    per_photo = {}
    for mid, cls, c in query(conn, "SELECT message_id, class_name, confidence FROM raw.image_detections"):
        per_photo.setdefault(mid, []).append((cls, round(c, 4)))
    assert per_photo[1] == per_photo[2] == per_photo[3] and len(per_photo[1]) >= 5


def test_missing_or_unreadable_weights_fail_at_once_naming_yolo_model(settings, tmp_path):
    with pytest.raises(EnrichError, match=r"YOLO_MODEL=/nope/weights.onnx: no such weights file"):
        run_yolo_enrichment(settings, tmp_path, model="/nope/weights.onnx")
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not a model at all")
    with pytest.raises(EnrichError, match=rf"YOLO_MODEL={bad}: cannot load weights from {bad}"):
        load_model(str(bad), "cpu")


HUGE = textwrap.dedent("""
    import sys
    from pathlib import Path
    from medical_etl.images import decode
    d = decode(Path(sys.argv[1]))
    print(d.reason, d.width, d.height, d.scale, None if d.image is None else d.image.shape)
    # VmHWM: this process image's own peak (ru_maxrss would carry the parent's across exec)
    print(next(int(l.split()[1]) // 1024 for l in open("/proc/self/status") if l.startswith("VmHWM")))
""")


def test_huge_images_are_reduced_or_refused_in_bounded_memory(tmp_path):
    from PIL import Image

    jpg = tmp_path / "big.jpg"
    Image.new("L", (12000, 12000), 128).save(jpg, quality=50)   # 144 Mpx: decoded at 1/2 scale (36 Mpx)
    png = tmp_path / "huge.png"
    Image.new("1", (20000, 20000), 1).save(png)                   # 400 Mpx, not a JPEG: refused
    for path, expect in ((jpg, "None 12000 12000 2 (6000, 6000, 3)"),
                         (png, "image too large (20000x20000 pixels, limit 40,000,000) 20000 20000 1 None")):
        r = subprocess.run([sys.executable, "-c", HUGE, str(path)], capture_output=True, text=True, timeout=120)
        first, rss = r.stdout.splitlines()
        assert first == expect
        assert int(rss) < 400, rss  # a full decode of 12000x12000 BGR alone is 432 MB


KILL_CHILD = textwrap.dedent("""
    import os, signal, sys
    from medical_etl import enrich
    from medical_etl.db import ConnParams
    real, n = enrich._write, {"batches": 0}
    def write_then_die(conn, outcomes, model_id):
        n["batches"] += 1
        if n["batches"] == 3:
            os.kill(os.getpid(), signal.SIGKILL)   # the third batch is in flight, not committed
        real(conn, outcomes, model_id)
    enrich._write = write_then_die
    host, port, db, user, lake, model = sys.argv[1:]
    enrich.run_yolo_enrichment(ConnParams(host, int(port), db, user), lake, model=model, batch=20,
                               build_models=False)
""")


def test_kill_mid_run_then_rerun_equals_clean_run(enriched_lake, conn, pg_database):
    s = enriched_lake
    r = subprocess.run([sys.executable, "-c", KILL_CHILD, pg_database.host, str(pg_database.port),
                        pg_database.dbname, pg_database.user, str(s.raw_data_path), str(SHARED_MODEL)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert query(conn, "SELECT count(*) FROM raw.image_analyses")[0][0] == 40  # two committed batches
    rest = run_yolo_enrichment(s, s.raw_data_path, model=str(SHARED_MODEL), build_models=False)
    assert rest["photos_analysed"] == 197 - 40
    analyses = query(conn, "SELECT channel, message_id, status, n_objects FROM raw.image_analyses ORDER BY 1, 2")
    dets = query(conn, """SELECT channel, message_id, object_index, class_name, round(confidence::numeric, 2)
                      FROM raw.image_detections ORDER BY 1, 2, 3""")
    assert len(analyses) == 197
    # a clean run over the same photos, model and database, for comparison
    with conn.cursor() as cur:
        cur.execute("DELETE FROM raw.image_analyses")
    conn.commit()
    run_yolo_enrichment(s, s.raw_data_path, model=str(SHARED_MODEL), build_models=False)
    assert query(conn, "SELECT channel, message_id, status, n_objects FROM raw.image_analyses ORDER BY 1, 2") == analyses
    assert query(conn, """SELECT channel, message_id, object_index, class_name, round(confidence::numeric, 2)
                      FROM raw.image_detections ORDER BY 1, 2, 3""") == dets


def test_decoded_image_is_bgr_like_opencv():
    import cv2

    d = decode(assets() / "zidane.jpg")
    assert np.array_equal(d.image, cv2.imread(str(assets() / "zidane.jpg")))
