-- Raw layer: Telegram messages as the data lake holds them, keyed per channel.
CREATE SCHEMA IF NOT EXISTS raw;

CREATE TABLE raw.telegram_messages (
    channel          text        NOT NULL,  -- channel username, as in the lake
    message_id       bigint      NOT NULL,  -- Telegram numbers messages per channel
    channel_title    text,
    channel_id       bigint,
    message_date     timestamptz NOT NULL,
    message_text     text        NOT NULL DEFAULT '',
    views            bigint,
    forwards         bigint,
    replies          bigint,
    edit_date        timestamptz,
    grouped_id       bigint,
    reply_to_msg_id  bigint,
    media_type       text,
    image_path       text,                  -- POSIX path relative to the lake
    scraped_at       timestamptz,
    source_file      text        NOT NULL,
    loaded_at        timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel, message_id)
);
CREATE INDEX telegram_messages_updated_at_idx ON raw.telegram_messages (updated_at);

-- Records (position set) or whole files (position NULL) that failed validation.
CREATE TABLE raw.load_rejects (
    source_file  text        NOT NULL,
    position     integer     NOT NULL DEFAULT -1,  -- index in the file's array; -1: the whole file
    reason       text        NOT NULL,
    payload      text,
    run_id       text,
    rejected_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source_file, position)
);

-- Bookkeeping: what was loaded from each lake file, so unchanged files are skipped.
CREATE TABLE raw.loaded_files (
    source_file  text        PRIMARY KEY,
    size_bytes   bigint      NOT NULL,
    mtime_ns     bigint      NOT NULL,
    sha256       text        NOT NULL,
    rows_valid   integer     NOT NULL,
    rows_rejected integer    NOT NULL,
    status       text        NOT NULL CHECK (status IN ('loaded', 'rejected')),
    run_id       text,
    loaded_at    timestamptz NOT NULL DEFAULT now()
);
