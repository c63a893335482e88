{{
    config(
        materialized='incremental',
        incremental_strategy='append',
        on_schema_change='sync_all_columns',
        pre_hook="{% if is_incremental() %}delete from {{ this }} where {{ is_pending_day('date_day', as_date=true) }}{% endif %}"
    )
}}
{#- append: the pre-hook has deleted the rows this build makes again (dbt's delete by unique key read the whole table) -#}
{#- Per channel, UTC day and image group: the posts and their views, for the visual-content report's
    engagement (average and median views by kind of image). image_group is the post's image category
    (promotional, product_display, lifestyle, other) when its photo was analysed, 'not_analysed' for a
    photo not analysed (yet), 'without_photo' for a post with no photo. views_sorted holds the posts'
    views in order: the median of any set of days is read from them. Incremental by day: a build
    recomputes the days of the change log's pending batches (which name the posts analysed since). -#}
-- read in the incremental branch: depends_on: {{ ref('int_post_changes') }}

with messages as (

    select dedup_key, channel_username, date_key, views, has_image
    from {{ ref('fct_messages') }}
    {% if is_incremental() %}
    where {{ is_pending_day() }}
    {% endif %}

),

categories as (

    -- joined by its dedup_key index: a daily build reads the pending days' photos only
    select dedup_key, image_category from {{ ref('fct_image_categories') }}

),

grouped as (

    select
        m.channel_username,
        to_date(m.date_key::text, 'YYYYMMDD')     as date_day,
        {{ image_group('m.has_image', 'c.image_category') }} as image_group,
        m.views
    from messages as m
    left join categories as c on c.dedup_key = m.dedup_key

)

select
    channel_username,
    date_day,
    image_group,
    count(*)                                     as posts,
    sum(views)                                   as views,
    array_agg(views order by views)              as views_sorted,
    {{ build_time() }}                           as built_at
from grouped
group by 1, 2, 3
