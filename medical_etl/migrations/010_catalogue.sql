-- The catalogue (medical_etl/transform/catalogue, stage 3 before dbt): the offers read from each distinct post text,
-- and what each distinct product text names. A text is read once per reader version and a product text
-- resolved once per resolver version: a row of another version is replaced, in the same transaction as the
-- rows it stands for, so a text's offers are always those of one version.
CREATE TABLE raw.catalogue_texts (
    text_hash       text        PRIMARY KEY,            -- md5 of the message text as loaded
    parser_version  text        NOT NULL,
    offers          integer     NOT NULL,
    read_at         timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE raw.catalogue_offers (
    text_hash        text          NOT NULL REFERENCES raw.catalogue_texts (text_hash) ON DELETE CASCADE,
    line_no          integer       NOT NULL,
    match_no         integer       NOT NULL,
    product_text     text          NOT NULL,
    product_text_key text          NOT NULL,            -- the product text normalised (the resolutions' key)
    price_birr       numeric(14,2) NOT NULL CHECK (price_birr > 0),
    currency_text    text          NOT NULL,
    source_line      text          NOT NULL,
    PRIMARY KEY (text_hash, line_no, match_no)
);
CREATE INDEX catalogue_offers_product_text_key_idx ON raw.catalogue_offers (product_text_key);

CREATE TABLE raw.product_resolutions (
    product_text_key text        PRIMARY KEY,
    resolver_version text        NOT NULL,
    product_name     text        NOT NULL,
    generic_name     text,
    strength         text,
    dosage_form      text,
    product_kind     text        NOT NULL CHECK (product_kind IN ('medicine', 'cosmetic', 'baby_food', 'device', 'other')),
    identity_key     text        NOT NULL,
    match            text        NOT NULL,
    resolved_at      timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- The versions the catalogue last ran with, and the newest message it had seen (a daily run reads the
-- posts updated after it; another reader version reads every post).
CREATE TABLE raw.catalogue_state (
    id               boolean     PRIMARY KEY DEFAULT true CHECK (id),
    parser_version   text        NOT NULL,
    resolver_version text        NOT NULL,
    messages_until   timestamptz
);
