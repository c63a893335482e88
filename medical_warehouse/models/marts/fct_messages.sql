{{
    config(
        materialized='incremental',
        unique_key='dedup_key',
        incremental_strategy='delete+insert',
        on_schema_change='sync_all_columns'
    )
}}

{#- One row per post, with the count and range of its prices. Incremental: the posts of the change log's
    pending batches (int_post_changes) are replaced (keyed by dedup_key, so a post whose username's other
    case won the deduplication replaces its old row). -#}
-- read in the incremental branch: depends_on: {{ ref('int_post_changes') }}

with messages as (

    select * from {{ ref('int_messages_deduplicated') }}
    {% if is_incremental() %}
    where {{ is_pending_post() }}
    {% endif %}

),

prices as (

    select
        dedup_key,
        count(*)        as price_count,
        min(price_birr) as min_price_birr,
        max(price_birr) as max_price_birr,
        max(source_updated_at) as prices_updated_at
    from {{ ref('fct_product_prices') }}
    {% if is_incremental() %}
    where {{ is_pending_post() }}
    {% endif %}
    group by dedup_key

)

select
    m.dedup_key,
    m.message_key,
    m.channel_key,
    m.date_key,
    m.channel_username,
    m.channel_title,
    m.message_id,
    m.message_date,
    m.hour_of_day,
    m.message_text,
    m.text_length,
    m.views,
    m.forwards,
    m.replies,
    m.media_type,
    m.has_image,
    m.image_path,
    coalesce(p.price_count, 0) as price_count,
    p.min_price_birr,
    p.max_price_birr,
    greatest(m.updated_at, p.prices_updated_at) as source_updated_at,
    {{ build_time() }} as built_at
from messages as m
left join prices as p on p.dedup_key = m.dedup_key
