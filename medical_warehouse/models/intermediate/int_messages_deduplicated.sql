{{
    config(
        materialized='incremental',
        unique_key='dedup_key',
        incremental_strategy='delete+insert',
        on_schema_change='sync_all_columns',
        post_hook=['create index if not exists int_messages_deduplicated_text_hash_idx on {{ this }} (text_hash)',
                   'create index if not exists int_messages_deduplicated_dedup_key_idx on {{ this }} (dedup_key)',
                   'analyze {{ this }}']
    )
}}
{#- One row per post. Telegram usernames ignore case, so rows of "CheMed123" and "chemed123" with the same
    message id are one post (dedup_key): the loader's precedence keeps one (newest scrape, then file path,
    then position in the file), the same winner whatever order the lake was loaded in.
    Incremental: a run ranks again only the posts with a row loaded or changed since the last run (all
    their rows, every case variant), and replaces those posts' rows; read by fct_messages, the price
    models, dim_channels, dim_dates and the incremental filters, it is ranked once per run for all. -#}

with messages as (

    select *, lower(channel_username) || '/' || message_id as dedup_key
    from {{ ref('stg_telegram_messages') }}
    {% if is_incremental() %}
    {%- set newest = run_query("select coalesce(max(updated_at), '-infinity'::timestamptz)::text from " ~ this).columns[0].values()[0] if execute else '-infinity' %}
    -- the newest row this table holds, as a literal (see changed_since_last_run)
    where lower(channel_username) || '/' || message_id in (
        select lower(channel_username) || '/' || message_id from {{ ref('stg_telegram_messages') }}
        where updated_at > '{{ newest }}'::timestamptz
    )
    {% endif %}

),

ranked as (

    select
        *,
        row_number() over (
            partition by lower(channel_username), message_id
            order by scraped_at desc nulls last, source_file desc, source_position desc nulls last
        ) as source_rank
    from messages

)

select * from ranked where source_rank = 1
