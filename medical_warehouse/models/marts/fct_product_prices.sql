{{
    config(
        materialized='incremental',
        unique_key='message_key',
        incremental_strategy='delete+insert',
        on_schema_change='sync_all_columns',
        pre_hook="{% if is_incremental() %}{{ delete_prices_of_changed_messages() }}{% endif %}"
    )
}}
{#- One row per (message, product, price in birr) a post offers for sale: the offers the catalogue read
    (medical_etl/catalogue) tied to their product in dim_products. With unique_key = message_key, the rows
    of a post whose text, reading or product changed are all replaced on the next incremental run; the
    pre-hook also removes the rows of a post edited to hold no price any more. -#}
-- the pre-hook reads these: depends_on: {{ ref('int_messages_deduplicated') }} {{ ref('stg_catalogue_texts') }} {{ ref('stg_catalogue_offers') }} {{ ref('stg_product_resolutions') }}

with offers as (

    select * from {{ ref('int_message_offers') }}
    {% if is_incremental() %}
    where message_key in ({{ messages_with_changed_offers() }})
    {% endif %}

),

final as (

    -- a product at the same price twice in a post is one offer: its first mention is kept
    select distinct on (message_key, product_key, price_birr)
        {{ surrogate_key(['message_key', 'line_no', 'match_no']) }} as price_key,
        message_key,
        channel_key,
        date_key,
        product_key,
        channel_username,
        message_id,
        message_date,
        product_text                                              as product_name,
        price_birr,
        currency_text,
        line_no,
        source_line,
        changed_at                                                as source_updated_at
    from offers
    where price_birr < 10000000
    order by message_key, product_key, price_birr, line_no, match_no

)

select * from final
