{#- Analysed photos per channel and image category (the API's visual-content report). -#}

with categories as (

    select * from {{ ref('fct_image_categories') }}

)

select
    channel_username,
    image_category,
    count(*) as photos
from categories
group by 1, 2
