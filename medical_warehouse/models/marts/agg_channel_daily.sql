{#- Per channel and day (UTC): posts, views, photo posts and prices posted; the API's channel
    activity sums these into days or ISO weeks. -#}

with messages as (

    select * from {{ ref('fct_messages') }}

)

select
    channel_username,
    (message_date at time zone 'UTC')::date       as date_day,
    count(*)                                      as posts,
    sum(views)                                    as views,
    count(*) filter (where has_image)             as photo_posts,
    count(*) filter (where price_count > 0)       as posts_with_prices,
    sum(price_count)                              as prices_posted
from messages
group by 1, 2
