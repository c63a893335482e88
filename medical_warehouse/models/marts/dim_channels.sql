{#- One row per channel (as its username is written in the posts the deduplication keeps) with its
    activity: summed from agg_channel_daily (channels x days, however many posts), not from the posts. -#}

with days as (

    select * from {{ ref('agg_channel_daily') }}

),

latest_title as (

    select distinct on (channel_username) channel_username, channel_title
    from days
    where channel_title is not null
    order by channel_username, date_day desc

),

stats as (

    select
        channel_username,
        min(first_post_at)                                        as first_post_at,
        max(last_post_at)                                         as last_post_at,
        sum(posts)::bigint                                        as post_count,
        sum(photo_posts)::bigint                                  as image_post_count,
        round(sum(views)::numeric / sum(posts), 1)                as avg_views,
        round(sum(photo_posts)::numeric / sum(posts), 4)          as image_post_share
    from days
    group by channel_username

)

select
    {{ surrogate_key(['s.channel_username']) }}   as channel_key,
    s.channel_username,
    coalesce(t.channel_title, s.channel_username) as channel_title,
    s.first_post_at,
    s.last_post_at,
    s.post_count,
    s.image_post_count,
    s.avg_views,
    s.image_post_share
from stats as s
left join latest_title as t on t.channel_username = s.channel_username
