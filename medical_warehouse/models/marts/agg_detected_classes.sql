{#- Detected objects per channel and class, from each photo's latest analysis. -#}

with detections as (

    select * from {{ ref('fct_image_detections') }}

)

select
    channel_username,
    class_name,
    count(*)                            as objects,
    count(distinct message_key)         as photos,
    round(avg(confidence), 4)           as avg_confidence
from detections
group by 1, 2
