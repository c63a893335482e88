{{
    config(
        materialized='incremental',
        unique_key='product_key',
        incremental_strategy='delete+insert',
        on_schema_change='sync_all_columns',
        pre_hook="set local enable_nestloop = off",
        post_hook=["{% if is_incremental() %}delete from {{ this }} as a where not exists (select 1 from {{ ref('int_product_price_counts') }} as c where c.product_key = a.product_key and c.price_birr is not null and c.n > 0){% endif %}"]
    )
}}
{#- Rollup behind the API's top-products report: one row per product of dim_products (channel_username
    null: all channels) and one per product and channel, with mentions, posts and min / median / max
    price in birr. From int_product_price_counts (a product's distinct prices and how often each is
    offered), not the fact table: the exact median of n offers is the mean of the prices at positions
    floor((n - 1) / 2) and ceil((n - 1) / 2) of the sorted offers, found from the counts' running sums.
    Incremental by product: a build recomputes the products whose counts it changed, and those whose
    name, generic, kind, strength or form dim_products now gives otherwise; a post-hook removes the
    products no offer names any more. The pre-hook turns nested loops off: the planner cannot estimate
    the rows of the CTEs below (it guesses 1 where there are a thousand product-channel rows) and nests
    loops over them, 1.5-2.2 s a build instead of 0.05 s. -#}

with products as (

    select * from {{ ref('dim_products') }}

),

{% if is_incremental() %}
touched as (

    select product_key from {{ ref('int_product_price_counts') }}
    where built_at > {{ watermark('built_at') }}
    union
    select product_key from (
        select product_key, product_name, generic_name, product_kind, strength, dosage_form from products
        except
        select product_key, product_name, generic_name, product_kind, strength, dosage_form from {{ this }}
        where channel_username is null
    ) as renamed

),
{% endif %}

counts as (

    select * from {{ ref('int_product_price_counts') }}
    where n > 0
    {% if is_incremental() %}
    and product_key in (select product_key from touched)
    {% endif %}

),

-- each price's offers per channel, and over all channels (channel_username null)
at_price as (

    select product_key, channel_username, price_birr, n from counts where price_birr is not null
    union all
    select product_key, null, price_birr, sum(n) from counts where price_birr is not null
    group by product_key, price_birr

),

ranked as (

    select
        *,
        sum(n) over (partition by product_key, channel_username order by price_birr) as up_to,
        sum(n) over (partition by product_key, channel_username)                      as total
    from at_price

),

rolled as (

    select
        product_key,
        channel_username,
        sum(n)::bigint                                                          as mentions,
        min(price_birr)                                                         as min_price_birr,
        max(price_birr)                                                         as max_price_birr,
        {{ middle_values('price_birr', 'up_to', 'total') }}
    from ranked
    group by product_key, channel_username

),

posts as (

    select product_key, channel_username, n as posts from counts where price_birr is null
    union all
    -- a post has one channel: posts add up over channels
    select product_key, null, sum(n) from counts where price_birr is null group by product_key

),

seen_in_channel as (

    -- a product's first and last offer in a channel: the first and last day of the day rollup, by index
    select
        c.product_key,
        c.channel_username,
        (select a.first_seen_at from {{ ref('agg_product_daily') }} as a
         where a.product_key = c.product_key and a.channel_username = c.channel_username
         order by a.date_day limit 1) as first_seen_at,
        (select a.last_seen_at from {{ ref('agg_product_daily') }} as a
         where a.product_key = c.product_key and a.channel_username = c.channel_username
         order by a.date_day desc limit 1) as last_seen_at
    from counts as c
    where c.price_birr is null

),

seen as (

    select product_key, channel_username, first_seen_at, last_seen_at from seen_in_channel
    union all
    select product_key, null, min(first_seen_at), max(last_seen_at) from seen_in_channel group by product_key

),

channels as (

    select product_key, array_agg(channel_username order by channel_username) as channels
    from counts where price_birr is null group by product_key

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
    p.posts::bigint                                                    as posts,
    r.min_price_birr,
    ((r.lower_middle + r.upper_middle) / 2)::numeric(14, 2)            as median_price_birr,
    r.max_price_birr,
    case when r.channel_username is null then c.channels else array[r.channel_username] end as channels,
    s.first_seen_at,
    s.last_seen_at,
    {{ build_time() }}                                                 as built_at
from rolled as r
inner join products as d on d.product_key = r.product_key
inner join posts as p on p.product_key = r.product_key and coalesce(p.channel_username, '') = coalesce(r.channel_username, '')
inner join seen as s on s.product_key = r.product_key and coalesce(s.channel_username, '') = coalesce(r.channel_username, '')
inner join channels as c on c.product_key = r.product_key
