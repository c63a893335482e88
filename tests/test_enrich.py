import ast
import csv
import json
import signal
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from helpers import SHARED_MODEL, query

from medical_etl.db import conn_params
from medical_etl.enrich import stage as enrich_mod
from medical_etl.enrich.images import decode
from medical_etl.enrich.stage import Detector, EnrichError, Photo, load_model, run_yolo_enrichment
from medical_etl.jobs import run_stage
from medical_etl.load import load_raw_to_postgres
from medical_etl.scrape.stage import scrape_telegram_data
from medical_etl.scrape.standin import StandInClient, read_message_list
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
    det = Detector(m)
    (out,) = det.run([det.prepare(Photo("x", 1, str(path)), decode(path))])
    return [o[1] for o in out.objects]


def test_bus_and_zidane_with_real_weights(model):
    bus = classes(model, assets() / "bus.jpg")
    assert bus.count("person") >= 4 and "bus" in bus
    assert classes(model, assets() / "zidane.jpg").count("person") == 2


@pytest.fixture
def enriched_lake(settings, shared_sample):
    posts = read_message_list(shared_sample / "messages", shared_sample / "images")
    scrape_telegram_data(StandInClient(posts), CHANNELS, settings.raw_data_path)
    load_raw_to_postgres(conn_params(settings), settings.raw_data_path)
    run_dbt_transformations(conn_params(settings), check_freshness=False)
    return settings



def test_sample_agrees_with_reference_and_rerun_does_nothing(enriched_lake, conn, shared_sample, monkeypatch):
    s = run_stage("enrich", replace(enriched_lake, yolo_model=str(SHARED_MODEL)))  # then the detection models
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

    monkeypatch.setattr(enrich_mod.Detector, "detect", no_inference)
    monkeypatch.setattr(enrich_mod, "load_model", no_inference)
    again = run_yolo_enrichment(conn_params(enriched_lake), enriched_lake.raw_data_path, model=str(SHARED_MODEL))
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
    load_raw_to_postgres(conn_params(settings), lake)
    s = run_yolo_enrichment(conn_params(settings), lake, model=str(SHARED_MODEL))
    assert s["photos_analysed"] == 4 and s["unreadable_photos"] == 3
    rows = dict((mid, (st, reason)) for mid, st, reason in query(
        conn, "SELECT message_id, status, reason FROM raw.image_analyses"))
    assert rows[1][0] == "ok"
    assert rows[2] == ("unreadable", "truncated JPEG (no end-of-image marker)")
    assert rows[3] == ("unreadable", "a video (MP4/MOV): unrecognised image format")
    assert rows[4] == ("unreadable", "file not found")
    # unreadable photos are not retried forever
    assert run_yolo_enrichment(conn_params(settings), lake, model=str(SHARED_MODEL))["photos_to_analyse"] == 0


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
        load_raw_to_postgres(conn_params(settings), lake)

    messages([1, 2])
    calls = {"n": 0}
    real = enrich_mod.Detector.detect

    def counting(self, items):
        calls["n"] += len(items)
        return real(self, items)

    monkeypatch.setattr(enrich_mod.Detector, "detect", counting)
    s = run_yolo_enrichment(conn_params(settings), lake, model=str(SHARED_MODEL))
    assert s["photos_analysed"] == 2 and s["duplicates_reused"] == 1 and calls["n"] == 1
    messages([1, 2, 3])  # a later repost: its results come from the database
    s = run_yolo_enrichment(conn_params(settings), lake, model=str(SHARED_MODEL))
    assert s["photos_analysed"] == 1 and s["duplicates_reused"] == 1 and calls["n"] == 1
    per_photo = {}
    for mid, cls, c in query(conn, "SELECT message_id, class_name, confidence FROM raw.image_detections"):
        per_photo.setdefault(mid, []).append((cls, round(c, 4)))
    assert per_photo[1] == per_photo[2] == per_photo[3] and len(per_photo[1]) >= 5


def test_missing_or_unreadable_weights_fail_at_once_naming_yolo_model(settings, tmp_path):
    with pytest.raises(EnrichError, match=r"YOLO_MODEL=/nope/weights.onnx: no such weights file"):
        run_yolo_enrichment(conn_params(settings), tmp_path, model="/nope/weights.onnx")
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not a model at all")
    with pytest.raises(EnrichError, match=rf"YOLO_MODEL={bad}: cannot load weights from {bad}"):
        load_model(str(bad), "cpu")


HUGE = textwrap.dedent("""
    import sys
    from pathlib import Path
    from medical_etl.enrich.images import decode
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
    from medical_etl.enrich import stage as enrich
    from medical_etl.db import ConnParams
    real, n = enrich._write, {"batches": 0}
    def write_then_die(conn, outcomes, model_id):
        n["batches"] += 1
        if n["batches"] == 3:
            os.kill(os.getpid(), signal.SIGKILL)   # the third batch is in flight, not committed
        real(conn, outcomes, model_id)
    enrich._write = write_then_die
    host, port, db, user, lake, model = sys.argv[1:]
    enrich.run_yolo_enrichment(ConnParams(host, int(port), db, user), lake, model=model, batch=20)
""")


def test_kill_mid_run_then_rerun_equals_clean_run(enriched_lake, conn, pg_database):
    s = enriched_lake
    r = subprocess.run([sys.executable, "-c", KILL_CHILD, pg_database.host, str(pg_database.port),
                        pg_database.dbname, pg_database.user, str(s.raw_data_path), str(SHARED_MODEL)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert query(conn, "SELECT count(*) FROM raw.image_analyses")[0][0] == 40  # two committed batches
    rest = run_yolo_enrichment(conn_params(s), s.raw_data_path, model=str(SHARED_MODEL))
    assert rest["photos_analysed"] == 197 - 40
    analyses = query(conn, "SELECT channel, message_id, status, n_objects FROM raw.image_analyses ORDER BY 1, 2")
    dets = query(conn, """SELECT channel, message_id, object_index, class_name, round(confidence::numeric, 2)
                      FROM raw.image_detections ORDER BY 1, 2, 3""")
    assert len(analyses) == 197
    # a clean run over the same photos, model and database, for comparison
    with conn.cursor() as cur:
        cur.execute("DELETE FROM raw.image_analyses")
    conn.commit()
    run_yolo_enrichment(conn_params(s), s.raw_data_path, model=str(SHARED_MODEL))
    assert query(conn, "SELECT channel, message_id, status, n_objects FROM raw.image_analyses ORDER BY 1, 2") == analyses
    assert query(conn, """SELECT channel, message_id, object_index, class_name, round(confidence::numeric, 2)
                      FROM raw.image_detections ORDER BY 1, 2, 3""") == dets


def test_decoded_image_is_bgr_like_opencv():
    import cv2

    d = decode(assets() / "zidane.jpg")
    assert np.array_equal(d.image, cv2.imread(str(assets() / "zidane.jpg")))


def _messages(settings, rows: list[tuple[int, str]]) -> None:
    """Lake records as raw rows (as a loader that let them through would leave them)."""
    from medical_etl.db import connect
    from medical_etl.migrate import migrate

    c = connect(conn_params(settings))
    try:
        migrate(c)
        with c, c.cursor() as cur:
            for mid, path in rows:
                cur.execute("""INSERT INTO raw.telegram_messages (channel, message_id, message_date, image_path,
                               media_type, source_file) VALUES ('CheMed123', %s, '2026-01-10T08:00:00Z', %s, 'photo',
                               'telegram_messages/2026-01-10/CheMed123.json')""", (mid, path))
    finally:
        c.close()


def test_enrich_reads_only_regular_files_inside_the_images_folder(settings, conn, tmp_path):
    import os

    import cv2

    lake = settings.raw_data_path
    imgs = lake / "images" / "CheMed123"
    imgs.mkdir(parents=True)
    ok, jpg = cv2.imencode(".jpg", cv2.imread(str(assets() / "bus.jpg")))
    (imgs / "1.jpg").write_bytes(jpg.tobytes())
    secret = tmp_path / "outside.jpg"              # a real photo, but outside the lake
    secret.write_bytes(jpg.tobytes())
    (imgs / "2.jpg").symlink_to("/etc/passwd")
    (imgs / "3.jpg").symlink_to("/dev/zero")
    (imgs / "4.jpg").symlink_to(secret)
    os.mkfifo(imgs / "5.jpg")                      # nobody writes: opening it must not block
    (lake / "images" / "linked").symlink_to(tmp_path)  # a folder link leading out of the lake
    with open(imgs / "6.jpg", "wb") as fh:         # 3 GB, sparse: over the byte cap, never read
        fh.truncate(3 << 30)
    _messages(settings, [(1, "images/CheMed123/1.jpg"), (2, "images/CheMed123/2.jpg"),
                         (3, "images/CheMed123/3.jpg"), (4, "images/CheMed123/4.jpg"),
                         (5, "images/CheMed123/5.jpg"), (6, "images/CheMed123/6.jpg"),
                         (7, "images/linked/outside.jpg"), (8, "/dev/zero"), (9, "../../etc/passwd"),
                         (10, f"images/../../..{secret}"), (11, str(secret))])
    s = run_yolo_enrichment(conn_params(settings), lake, model=str(SHARED_MODEL))
    assert s["photos_analysed"] == 11 and s["unreadable_photos"] == 10 and s["refused_photos"] == 10
    rows = dict((mid, (st, reason)) for mid, st, reason in query(
        conn, "SELECT message_id, status, reason FROM raw.image_analyses"))
    assert rows[1][0] == "ok"
    link = "refused: a symbolic link (links are not followed)"
    outside = "refused: path outside the lake's images folder"
    assert rows[2] == rows[3] == rows[4] == ("unreadable", link)
    assert rows[5] == ("unreadable", "refused: a FIFO, not a regular file")
    assert rows[6] == ("unreadable", f"refused: file too large ({3 << 30:,} bytes, limit 52,428,800)")
    assert rows[7] == ("unreadable", "refused: 'linked' in the path is a symbolic link or not a folder")
    assert rows[8] == rows[9] == rows[10] == rows[11] == ("unreadable", outside)
    assert s["refused_reasons"][link] == 3 and s["refused_reasons"][outside] == 4
    # nothing outside the lake reached the warehouse, and refusals are final (not retried)
    assert query(conn, "SELECT count(*) FROM raw.image_detections WHERE message_id <> 1")[0][0] == 0
    assert run_yolo_enrichment(conn_params(settings), lake, model=str(SHARED_MODEL))["photos_to_analyse"] == 0


CONFINED_RSS = textwrap.dedent("""
    import sys
    from pathlib import Path
    from medical_etl.enrich.images import read_confined
    lake = Path(sys.argv[1])
    for rel in sys.argv[2:]:
        r = read_confined(lake, rel, max_bytes=int(1e9))
        print(rel, r.refused, r.reason, None if r.data is None else len(r.data))
    print(next(int(l.split()[1]) // 1024 for l in open("/proc/self/status") if l.startswith("VmHWM")))
""")


def test_dev_zero_and_growing_files_are_read_in_bounded_memory(tmp_path):
    """/dev/zero behind a link, a device, and a file past the cap: refused before memory grows."""
    imgs = tmp_path / "images" / "c"
    imgs.mkdir(parents=True)
    (imgs / "zero.jpg").symlink_to("/dev/zero")
    with open(imgs / "big.jpg", "wb") as fh:   # sparse 2 GB: over a 1 GB cap
        fh.truncate(2 << 30)
    r = subprocess.run([sys.executable, "-c", CONFINED_RSS, str(tmp_path), "images/c/zero.jpg",
                        "images/c/big.jpg", "/dev/zero", "images/../../../../dev/zero"],
                       capture_output=True, text=True, timeout=120)
    *lines, rss = r.stdout.splitlines()
    assert all(" True refused: " in line and line.endswith(" None") for line in lines), lines
    assert len(lines) == 4 and int(rss) < 150, rss   # reading any of them would take 1 GB or more


def test_a_failing_decoder_ends_the_stage_with_an_error_not_a_hang(settings, conn, monkeypatch):
    import time

    import cv2

    lake = settings.raw_data_path
    (lake / "images" / "CheMed123").mkdir(parents=True)
    ok, jpg = cv2.imencode(".jpg", cv2.imread(str(assets() / "zidane.jpg")))
    rows = []
    for i in range(1, 41):
        (lake / f"images/CheMed123/{i}.jpg").write_bytes(jpg.tobytes() + b"\0" * i)  # distinct bytes
        rows.append((i, f"images/CheMed123/{i}.jpg"))
    _messages(settings, rows)
    from medical_etl.enrich import detection

    real = detection.decode_bytes
    calls = {"n": 0}

    def decode_then_fail(data, max_pixels):
        calls["n"] += 1
        if calls["n"] == 3:
            raise MemoryError("cannot allocate the decoded image")
        return real(data, max_pixels)

    monkeypatch.setattr(detection, "decode_bytes", decode_then_fail)
    t0 = time.monotonic()
    with pytest.raises(EnrichError, match=r"photo decoder failed on images/CheMed123/\d+\.jpg: MemoryError: "
                                          r"cannot allocate the decoded image"):
        run_yolo_enrichment(conn_params(settings), lake, model=str(SHARED_MODEL), decoders=2)
    assert time.monotonic() - t0 < 60   # the model load included; a hang would wait for STAGE_TIMEOUT
    assert [t.name for t in __import__("threading").enumerate() if t.name.startswith("enrich-")] == []


def test_parallel_stage_gives_the_same_detections_as_one_photo_at_a_time(settings, conn, shared_sample):
    """Decoder pool + a worker per core (one-thread sessions) vs Ultralytics' predict, photo by photo."""
    posts = read_message_list(shared_sample / "messages", shared_sample / "images")
    scrape_telegram_data(StandInClient(posts), CHANNELS, settings.raw_data_path)
    load_raw_to_postgres(conn_params(settings), settings.raw_data_path)
    s = run_yolo_enrichment(conn_params(settings), settings.raw_data_path, model=str(SHARED_MODEL),
                            workers=2, decoders=3, batch=7, infer_batch=4)   # several photos per call, as on a GPU
    assert s["workers"] == 2 and s["decoders"] == 3 and s["device"] == "cpu" and s["infer_batch"] == 4
    ours: dict = {}
    for path, cls, c, x1, y1, x2, y2 in query(conn, """SELECT image_path, class_id, confidence, x1, y1, x2, y2
                                                FROM raw.image_detections ORDER BY image_path, object_index"""):
        ours.setdefault(path, []).append((cls, c, (x1, y1, x2, y2)))
    ref_model = load_model(str(SHARED_MODEL), "cpu")
    compared = 0
    for (path,) in query(conn, "SELECT image_path FROM raw.image_analyses WHERE status <> 'unreadable' "
                               "AND (channel, message_id) IN (SELECT channel, min(message_id) FROM "
                               "raw.image_analyses GROUP BY channel, content_sha256) ORDER BY 1")[:60]:
        dec = decode(settings.raw_data_path / path)
        (r,) = ref_model.predict(dec.image, verbose=False)
        mine = ours.get(path, [])
        assert [int(c) for c in r.boxes.cls.tolist()] == [m[0] for m in mine], path
        np.testing.assert_allclose([m[1] for m in mine], r.boxes.conf.tolist(), atol=1e-4)
        np.testing.assert_allclose(np.array([m[2] for m in mine]).reshape(-1, 4),
                                   np.array(r.boxes.xyxy.tolist()).reshape(-1, 4), atol=0.05)
        compared += 1
    assert compared == 60 and sum(len(v) for v in ours.values()) > 100


def test_batched_forward_matches_one_photo_per_call(tmp_path):
    """The GPU path's batches (here on CPU, with a dynamic-batch torch model) do not change results."""
    import shutil

    import torch
    import ultralytics

    torch.manual_seed(0)
    cfg = tmp_path / "yolov8n.yaml"   # Ultralytics' shipped architecture, random weights (no download)
    shutil.copy(Path(ultralytics.__file__).parent / "cfg/models/v8/yolov8.yaml", cfg)
    m = load_model(str(cfg), "cpu", conf=0.00015)   # untrained class scores are ~1e-4
    det = Detector(m)
    photos = sorted(Path(__file__).resolve().parents[1].glob("medical_etl/sample_export/*/photos/*.jpg"))[:3]
    photos += [assets() / "bus.jpg", assets() / "zidane.jpg"]
    ready = [det.prepare(Photo("c", i, str(p)), decode(p)) for i, p in enumerate(photos)]
    x = torch.from_numpy(np.stack([r.pixels for r in ready])).permute(0, 3, 1, 2).flip(1).float() / 255
    with torch.inference_mode():
        def first(y):  # a torch model returns (predictions, feature maps)
            return y[0] if isinstance(y, (list, tuple)) else y

        raw_batched = first(det.backend(x))
        raw_single = torch.cat([first(det.backend(x[i:i + 1])) for i in range(len(ready))])
    assert raw_batched.shape == (5, 84, 8400)
    torch.testing.assert_close(raw_batched, raw_single, atol=1e-3, rtol=1e-4)
    batched = det.run(ready)
    single = [det.run([r])[0] for r in ready]
    total = 0
    for b, one in zip(batched, single, strict=True):
        assert [o[0] for o in b.objects] == [o[0] for o in one.objects]
        np.testing.assert_allclose([o[2] for o in b.objects], [o[2] for o in one.objects], atol=1e-4)
        np.testing.assert_allclose([o[3:] for o in b.objects], [o[3:] for o in one.objects], atol=0.05)
        total += len(b.objects)
    assert total > 0 and len(batched) == 5


def test_progress_per_batch_on_a_terminal_only(settings, capfd):
    import cv2

    lake = settings.raw_data_path
    (lake / "images" / "CheMed123").mkdir(parents=True)
    img = cv2.imread(str(assets() / "bus.jpg"))
    rows = []
    for i in range(1, 6):
        ok, jpg = cv2.imencode(".jpg", cv2.flip(img, 1) if i % 2 else img, [cv2.IMWRITE_JPEG_QUALITY, 80 + i])
        (lake / f"images/CheMed123/{i}.jpg").write_bytes(jpg.tobytes())
        rows.append((i, f"images/CheMed123/{i}.jpg"))
    _messages(settings, rows[:2])
    run_yolo_enrichment(conn_params(settings), lake, model=str(SHARED_MODEL), batch=1)
    assert capfd.readouterr().err == ""            # not a terminal (cron, a test): quiet
    _messages(settings, rows[2:])
    run_yolo_enrichment(conn_params(settings), lake, model=str(SHARED_MODEL), batch=1, progress=True)
    err = capfd.readouterr().err
    lines = err.splitlines()
    assert [line.split(",")[0] for line in lines] == [f"enrich: {i}/3 photos" for i in (1, 2, 3)]
    assert all(line.endswith(" s)") and " photos/s, " in line for line in lines), lines


def test_nothing_new_loads_no_model_and_builds_nothing_when_asked(settings, monkeypatch):
    from medical_etl.transform import stage as transform

    def forbidden(*a, **k):
        raise AssertionError("not expected on a day with nothing new")

    monkeypatch.setattr(enrich_mod, "load_model", forbidden)
    monkeypatch.setattr(transform, "run_dbt_transformations", forbidden)
    with_model = replace(settings, yolo_model=str(SHARED_MODEL))
    s = run_stage("enrich", with_model, build_models="if_new")
    assert s["photos_to_analyse"] == 0 and "dbt" not in s
    with pytest.raises(AssertionError, match="nothing new"):   # a plain enrich run still builds and tests
        run_stage("enrich", with_model)


def test_device_auto_and_the_plan_for_cpu_and_gpu():
    import torch

    from medical_etl.enrich.stage import _device, plan

    assert _device("auto") == ("0" if torch.cuda.is_available() else "cpu")
    assert plan("cpu", 16, 2) == {"device": "cpu", "workers": 2, "decoders": 2, "infer_batch": 1}
    assert plan("0", 16, 16) == {"device": "0", "workers": 1, "decoders": 16, "infer_batch": 16}
    assert plan("cuda:1", 32, 8, workers=2) == {"device": "cuda:1", "workers": 2, "decoders": 8, "infer_batch": 32}


def test_a_day_partition_analyses_that_days_photos_once(enriched_lake, conn):
    """``day``: the photos of posts dated that UTC day only (how several workers share the photos); running
    the partition again analyses nothing, and the rest of the photos are left for the other days."""
    (day, n), *_ = query(conn, """SELECT (message_date AT TIME ZONE 'UTC')::date AS d, count(*) FROM raw.telegram_messages
                                  WHERE image_path IS NOT NULL GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 1""")
    params = conn_params(enriched_lake)
    s = run_yolo_enrichment(params, enriched_lake.raw_data_path, model=str(SHARED_MODEL), day=day)
    assert s["day"] == day.isoformat() and s["photos_to_analyse"] == n > 1
    assert query(conn, """SELECT count(*) FROM raw.image_analyses a JOIN raw.telegram_messages m USING (channel, message_id)
                          WHERE (m.message_date AT TIME ZONE 'UTC')::date <> %s""", (day,))[0][0] == 0
    assert run_yolo_enrichment(params, enriched_lake.raw_data_path, model=str(SHARED_MODEL), day=day)[
        "photos_to_analyse"] == 0
    rest = run_yolo_enrichment(params, enriched_lake.raw_data_path, model=str(SHARED_MODEL))
    photos = query(conn, "SELECT count(*) FROM raw.telegram_messages WHERE image_path IS NOT NULL")[0][0]
    assert rest["photos_to_analyse"] == photos - n and rest["already_analysed"] == n
