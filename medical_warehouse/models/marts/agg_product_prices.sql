{#- Rollup behind the API's top-products report: one row per product (channel_username null: all
    channels) and one per product and channel, with mentions and min / median / max price in birr.
    A few thousand rows however many posts, so the report reads an index, not the fact table. -#}

with prices as (

    select * from {{ ref('fct_product_prices') }}

)

select
    product_name_normalized,
    channel_username,
    mode() within group (order by product_name)                        as product_name,
    count(*)                                                           as mentions,
    count(distinct message_key)                                        as posts,
    min(price_birr)                                                    as min_price_birr,
    percentile_cont(0.5) within group (order by price_birr)::numeric(14, 2) as median_price_birr,
    max(price_birr)                                                    as max_price_birr,
    array_agg(distinct channel_username order by channel_username)     as channels,
    min(message_date)                                                  as first_seen_at,
    max(message_date)                                                  as last_seen_at
from prices
group by grouping sets ((product_name_normalized), (product_name_normalized, channel_username))
