{{
    config(
        materialized='incremental',
        incremental_strategy='append',
        on_schema_change='sync_all_columns',
        pre_hook="{% if is_incremental() %}delete from {{ this }} where {{ is_pending_day('date_day', as_date=true) }}{% endif %}"
    )
}}
{#- append: the pre-hook has deleted the rows this build makes again (dbt's delete by unique key read the whole table) -#}
{#- A product's mentions and min / median / max price in birr per UTC day and channel (the API's price
    history), and per day over all channels (channel_username null: the top-products report over a date
    window is answered from these rows alone). Bounded by days x channels per product, however many
    posts mention it. Incremental by day: a build recomputes the days the change log's pending batches
    name (the days their posts had and have), reading those days' prices only. -#}
-- read in the incremental branch: depends_on: {{ ref('int_post_changes') }}

with prices as (

    select
        p.product_key,
        d.generic_name,
        d.product_kind,
        p.channel_username,
        (message_date at time zone 'UTC')::date as date_day,
        message_key,
        message_date,
        price_birr,
        source_updated_at
    from {{ ref('fct_product_prices') }} as p
    inner join {{ ref('dim_products') }} as d on d.product_key = p.product_key
    {% if is_incremental() %}
    where {{ is_pending_day('p.date_key') }}
    {% endif %}

)

select
    product_key,
    generic_name,
    product_kind,
    channel_username,
    date_day,
    count(*)                                                           as mentions,
    min(price_birr)                                                    as min_price_birr,
    percentile_cont(0.5) within group (order by price_birr)::numeric(14, 2) as median_price_birr,
    max(price_birr)                                                    as max_price_birr,
    -- a post has one day and one channel, so posts add up over days and channels
    count(distinct message_key)                                        as posts,
    min(message_date)                                                  as first_seen_at,
    max(message_date)                                                  as last_seen_at,
    -- every price, sorted: exact medians over any window of days without reading the facts
    array_agg(price_birr order by price_birr)                          as prices,
    max(source_updated_at)                                             as source_updated_at,
    {{ build_time() }}                                                 as built_at
from prices
group by grouping sets ((product_key, generic_name, product_kind, channel_username, date_day),
                        (product_key, generic_name, product_kind, date_day))
