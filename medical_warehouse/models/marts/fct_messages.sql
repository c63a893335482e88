{{
    config(
        materialized='incremental',
        unique_key='message_key',
        incremental_strategy='delete+insert',
        on_schema_change='sync_all_columns'
    )
}}

-- the incremental filter reads these: depends_on: {{ ref('stg_catalogue_texts') }} {{ ref('stg_catalogue_offers') }} {{ ref('stg_product_resolutions') }}

with messages as (

    select * from {{ ref('int_messages_deduplicated') }}
    {% if is_incremental() %}
    -- posts changed since the last run, and posts whose offers were re-read or re-resolved since (a
    -- post whose re-read text has no offer left among them): one set of keys, a semi-join
    where message_key in ({{ messages_with_changed_offers() }})
    {% endif %}

),

prices as (

    select
        message_key,
        count(*)        as price_count,
        min(price_birr) as min_price_birr,
        max(price_birr) as max_price_birr,
        max(source_updated_at) as prices_updated_at
    from {{ ref('fct_product_prices') }}
    {% if is_incremental() %}
    where message_key in (select message_key from messages)
    {% endif %}
    group by message_key

)

select
    m.message_key,
    m.channel_key,
    m.date_key,
    m.channel_username,
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
    greatest(m.updated_at, p.prices_updated_at) as source_updated_at
from messages as m
left join prices as p on p.message_key = m.message_key
