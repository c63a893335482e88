{{
    config(
        materialized='incremental',
        unique_key='count_key',
        incremental_strategy='delete+insert',
        on_schema_change='sync_all_columns',
        indexes=[{'columns': ['count_key'], 'unique': true}, {'columns': ['built_at']}],
        post_hook=['{{ analyze_if_stale() }}']
    )
}}
{#- How many posts of each channel and image group (macros/incremental.sql image_group) have each number
    of views: all agg_image_engagement needs for its exact averages and medians, in rows bounded by the
    distinct view counts, however long the history. Incremental by difference, as int_product_price_counts:
    for each post of the change log's pending batches, its row now (fct_messages with its photo's category)
    is added and its row before its earliest pending batch (the batch's 'old' row) subtracted. -#}
-- read in the incremental branch: depends_on: {{ ref('int_post_changes') }}

{% if is_incremental() %}

with pending as (

    {{ pending_changes() }}

),

first_batch as (

    select dedup_key, min(built_at) as built_at from pending group by dedup_key

),

posts as (

    select m.channel_username, {{ image_group('m.has_image', 'c.image_category') }} as image_group, m.views, 1 as sign
    from {{ ref('fct_messages') }} as m
    left join {{ ref('fct_image_categories') }} as c on c.dedup_key = m.dedup_key
    where m.dedup_key in (select dedup_key from first_batch)

    union all

    select o.channel_username, o.image_group, o.views, -1
    from pending as o
    inner join first_batch as f on f.dedup_key = o.dedup_key and f.built_at = o.built_at
    where o.state = 'old' and o.product_key is null

),

changes as (

    select channel_username, image_group, views, sum(sign) as change from posts group by 1, 2, 3

),

counted as (

    {{ counts_after('changes', ['channel_username', 'image_group', 'views']) }}

)

select count_key, channel_username, image_group, views, n, {{ build_time() }} as built_at
from counted

{% else %}

with posts as (

    select m.channel_username, {{ image_group('m.has_image', 'c.image_category') }} as image_group, m.views
    from {{ ref('fct_messages') }} as m
    left join {{ ref('fct_image_categories') }} as c on c.dedup_key = m.dedup_key

)

select
    {{ surrogate_key(['channel_username', 'image_group', 'views']) }} as count_key,
    channel_username, image_group, views, count(*) as n, {{ build_time() }} as built_at
from posts
group by channel_username, image_group, views

{% endif %}
