-- Enrichment results. One row per photo and model (so photos without objects and broken files are
-- not retried), and one row per detected object. model = weights name + '@' + weights sha256 prefix.
CREATE TABLE raw.image_analyses (
    channel       text        NOT NULL,
    message_id    bigint      NOT NULL,
    model         text        NOT NULL,
    image_path    text        NOT NULL,
    status        text        NOT NULL CHECK (status IN ('ok', 'no_objects', 'unreadable')),
    n_objects     integer     NOT NULL DEFAULT 0,
    reason        text,
    image_width   integer,
    image_height  integer,
    analysed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel, message_id, model)
);

CREATE TABLE raw.image_detections (
    channel       text        NOT NULL,
    message_id    bigint      NOT NULL,
    model         text        NOT NULL,
    object_index  integer     NOT NULL,
    image_path    text        NOT NULL,
    class_id      integer     NOT NULL,
    class_name    text        NOT NULL,
    confidence    real        NOT NULL,
    x1 real NOT NULL, y1 real NOT NULL, x2 real NOT NULL, y2 real NOT NULL,
    image_width   integer     NOT NULL,
    image_height  integer     NOT NULL,
    detected_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel, message_id, model, object_index),
    FOREIGN KEY (channel, message_id, model) REFERENCES raw.image_analyses ON DELETE CASCADE
);
