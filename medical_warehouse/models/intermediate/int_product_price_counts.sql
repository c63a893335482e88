{{
    config(
        materialized='incremental',
        unique_key='count_key',
        incremental_strategy='delete+insert',
        on_schema_change='sync_all_columns',
        indexes=[{'columns': ['count_key'], 'unique': true}, {'columns': ['product_key']}, {'columns': ['built_at']}],
        post_hook=['{{ analyze_if_stale() }}']
    )
}}
{#- How often each product is offered at each price, per channel (price_birr set: the offers at that price),
    and in how many posts per channel (price_birr null): all agg_product_prices needs for its all-time
    mentions, posts, min / median / max and channels, in rows bounded by the distinct prices of a
    product, however long the history. Incremental by difference: for each post of the change log's
    pending batches, its offers now (fct_product_prices) are added and its offers before its earliest
    pending batch (the batch's 'old' rows) subtracted. A count that reaches 0 keeps its row (so every
    build that changes a count leaves a row stamped built_at, and no batch is ever subtracted twice). -#}
-- read in the incremental branch: depends_on: {{ ref('int_post_changes') }}

{% if is_incremental() %}

with pending as (

    {{ pending_changes() }}

),

first_batch as (

    select dedup_key, min(built_at) as built_at from pending group by dedup_key

),

offers as (

    -- what the posts offer now: +1 each
    select product_key, channel_username, price_birr, message_key, 1 as sign
    from {{ ref('fct_product_prices') }}
    where dedup_key in (select dedup_key from first_batch)

    union all

    -- what they offered before: -1 each
    select o.product_key, o.channel_username, o.price_birr, o.message_key, -1
    from pending as o
    inner join first_batch as f on f.dedup_key = o.dedup_key and f.built_at = o.built_at
    where o.state = 'old' and o.product_key is not null

),

per_post as (

    -- a post counts once per product and channel: +1 if it offers the product now, -1 if it did before
    select product_key, channel_username, message_key, sign
    from offers
    group by product_key, channel_username, message_key, sign

),

changes as (

    select product_key, channel_username, price_birr, sum(sign) as change
    from offers group by product_key, channel_username, price_birr
    union all
    select product_key, channel_username, null, sum(sign)
    from per_post group by product_key, channel_username

),

counted as (

    {{ counts_after('changes', ['product_key', 'channel_username', 'price_birr']) }}

)

select count_key, product_key, channel_username, price_birr, n, {{ build_time() }} as built_at
from counted

{% else %}

with prices as (

    select * from {{ ref('fct_product_prices') }}

),

counted as (

    select product_key, channel_username, price_birr, count(*) as n
    from prices group by product_key, channel_username, price_birr
    union all
    select product_key, channel_username, null, count(distinct message_key)
    from prices group by product_key, channel_username

)

select
    {{ surrogate_key(['product_key', 'channel_username', 'price_birr']) }} as count_key,
    product_key, channel_username, price_birr, n, {{ build_time() }} as built_at
from counted

{% endif %}
