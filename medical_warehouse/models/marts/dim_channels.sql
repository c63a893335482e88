with messages as (

    select * from {{ ref('int_messages_deduplicated') }}

),

latest_title as (

    select distinct on (channel_username) channel_username, channel_title
    from messages
    where channel_title is not null
    order by channel_username, message_date desc

),

stats as (

    select
        channel_key,
        channel_username,
        min(message_date)                                         as first_post_at,
        max(message_date)                                         as last_post_at,
        count(*)                                                  as post_count,
        count(*) filter (where has_image)                         as image_post_count,
        round(avg(views), 1)                                      as avg_views,
        round(count(*) filter (where has_image)::numeric / count(*), 4) as image_post_share
    from messages
    group by channel_key, channel_username

)

select
    s.channel_key,
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
