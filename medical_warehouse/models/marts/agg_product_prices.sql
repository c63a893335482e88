{#- Rollup behind the API's top-products report: one row per product of dim_products (channel_username null: all
    channels) and one per product and channel, with mentions and min / median / max price in birr.
    A few thousand rows however many posts, so the report reads an index, not the fact table. -#}

with prices as (

    select * from {{ ref('fct_product_prices') }}

),

products as (

    select * from {{ ref('dim_products') }}

),

rolled as (

select
    product_key,
    channel_username,
    count(*)                                                           as mentions,
    count(distinct message_key)                                        as posts,
    min(price_birr)                                                    as min_price_birr,
    percentile_cont(0.5) within group (order by price_birr)::numeric(14, 2) as median_price_birr,
    max(price_birr)                                                    as max_price_birr,
    array_agg(distinct channel_username order by channel_username)     as channels,
    min(message_date)                                                  as first_seen_at,
    max(message_date)                                                  as last_seen_at
from prices
group by grouping sets ((product_key), (product_key, channel_username))

)

select
    r.product_key,
    r.channel_username,
    d.product_name,
    lower(d.product_name)                                              as product_name_normalized,
    d.generic_name,
    d.product_kind,
    d.strength,
    d.dosage_form,
    r.mentions,
    r.posts,
    r.min_price_birr,
    r.median_price_birr,
    r.max_price_birr,
    r.channels,
    r.first_seen_at,
    r.last_seen_at
from rolled as r
inner join products as d on d.product_key = r.product_key
