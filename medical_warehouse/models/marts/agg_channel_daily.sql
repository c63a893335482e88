{{
    config(
        materialized='incremental',
        incremental_strategy='append',
        on_schema_change='sync_all_columns',
        pre_hook="{% if is_incremental() %}delete from {{ this }} where {{ is_pending_day('date_day', as_date=true) }}{% endif %}"
    )
}}
{#- append: the pre-hook has deleted the rows this build makes again (dbt's delete by unique key read the whole table) -#}
{#- Per channel and day (UTC): posts, views, photo posts and prices posted; the API's channel activity sums
    these into days or ISO weeks, and dim_channels sums them over all days. Incremental by day: a build
    recomputes the days the change log's pending batches name, reading those days' posts only. -#}
-- read in the incremental branch: depends_on: {{ ref('int_post_changes') }}

with messages as (

    select * from {{ ref('fct_messages') }}
    {% if is_incremental() %}
    where {{ is_pending_day() }}
    {% endif %}

)

select
    channel_username,
    (message_date at time zone 'UTC')::date       as date_day,
    count(*)                                      as posts,
    sum(views)                                    as views,
    count(*) filter (where has_image)             as photo_posts,
    count(*) filter (where price_count > 0)       as posts_with_prices,
    sum(price_count)                              as prices_posted,
    min(message_date)                             as first_post_at,
    max(message_date)                             as last_post_at,
    -- the title of the day's latest post that has one (dim_channels keeps the newest day's)
    (array_agg(channel_title order by message_date desc, message_id desc)
        filter (where channel_title is not null))[1] as channel_title,
    {{ build_time() }}                            as built_at
from messages
group by 1, 2
