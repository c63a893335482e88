{#- Which kind of image draws attention: per channel (channel_username null: all channels) and image group,
    the posts, their average and their exact median views. image_group is an image category
    (promotional, product_display, lifestyle, other), not_analysed (a photo not analysed yet),
    without_photo, or with_photo (every post with a photo). From int_views_counts (how many posts have
    each number of views), so a build reads as many rows as there are distinct view counts, not posts:
    the median of n posts is the mean of the views at positions floor((n - 1) / 2) and ceil((n - 1) / 2)
    of the sorted posts, found from the counts' running sums. -#}

with counts as (

    select channel_username, image_group, views, n from {{ ref('int_views_counts') }} where n > 0

),

grouped as (

    select channel_username, image_group, views, n from counts
    union all
    select channel_username, 'with_photo', views, sum(n) from counts
    where image_group <> 'without_photo' group by 1, 2, 3

),

both_levels as (

    select channel_username, image_group, views, sum(n) as n from grouped group by 1, 2, 3
    union all
    select null, image_group, views, sum(n) from grouped group by 2, 3

),

running as (

    select
        channel_username, image_group, views, n,
        sum(n) over (partition by channel_username, image_group order by views) as upto,
        sum(n) over (partition by channel_username, image_group)               as total
    from both_levels

),

rolled as (

    select
        channel_username,
        image_group,
        max(total)                                                          as posts,
        sum(views * n)                                                      as views,
        {{ middle_values('views', 'upto', 'total') }}
    from running
    group by 1, 2

)

select
    channel_username,
    image_group,
    posts::bigint                                          as posts,
    views::bigint                                          as views,
    round(views::numeric / posts, 1)                       as avg_views,
    ((lower_middle + upper_middle) / 2.0)::numeric(14, 1)  as median_views
from rolled
