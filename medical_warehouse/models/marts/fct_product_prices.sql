{{
    config(
        materialized='incremental',
        unique_key='message_key',
        incremental_strategy='delete+insert',
        on_schema_change='sync_all_columns',
        pre_hook="{% if is_incremental() %}{{ delete_prices_of_changed_messages() }}{% endif %}"
    )
}}
{#- One row per (message, product, price in birr) a post offers for sale; the prices are read in
    int_price_lines -> int_price_matches -> int_named_prices. With unique_key = message_key, an edited
    post's rows are all replaced on the next incremental run; the pre-hook also removes the rows of a
    post edited to hold no price any more (delete+insert only deletes keys it re-inserts). -#}
-- the pre-hook reads the posts: depends_on: {{ ref('int_messages_deduplicated') }}

with named_prices as (

    select * from {{ ref('int_named_prices') }}
    where {{ changed_since_last_run('updated_at') }}

),

final as (

    -- a product at the same price twice in a post is one offer: its first mention is kept
    select distinct on (message_key, lower(product_name), price_birr)
        {{ surrogate_key(['message_key', 'line_no', 'match_no']) }} as price_key,
        message_key,
        channel_key,
        date_key,
        channel_username,
        message_id,
        message_date,
        product_name,
        lower(product_name)                                       as product_name_normalized,
        price_birr,
        currency_text,
        line_no,
        line                                                      as source_line,
        updated_at                                                as source_updated_at
    from named_prices
    where product_name is not null
      and price_birr > 0
      and price_birr < 10000000
    order by message_key, lower(product_name), price_birr, line_no, match_no

)

select * from final
