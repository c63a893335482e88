{{
    config(
        materialized='table',
        post_hook=['create index on {{ this }} (text_hash)', 'analyze {{ this }}']
    )
}}
{#- One row per post. Telegram usernames ignore case, so rows of "CheMed123" and "chemed123" with the same
    message id are one post: the loader's precedence keeps one (newest scrape, then file path, then
    position in the file), the same winner whatever order the lake was loaded in.
    A table: read by fct_messages, the price models, dim_channels, dim_dates, fct_product_prices'
    pre-hook and its tests, it is ranked once per run instead of once per reader (a window over every
    raw row), and a selection that rebuilds staging alone leaves it (and its readers) in place. -#}

with messages as (

    select * from {{ ref('stg_telegram_messages') }}

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
