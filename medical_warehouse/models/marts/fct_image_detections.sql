{{
    config(
        materialized='incremental',
        incremental_strategy='append',
        on_schema_change='sync_all_columns',
        pre_hook="{% if is_incremental() %}delete from {{ this }} where {{ is_pending_photo() }}{% endif %}"
    )
}}
{#- append: the pre-hook has deleted the rows this build makes again (dbt's delete by unique key read the whole table) -#}
{#- One row per detected object, from each photo's most recent analysis (a new model version replaces
    the old one's rows here; raw keeps both). Incremental: a build recomputes the posts analysed since its
    newest analysis and the posts of the change log's pending batches. -#}
-- read in the incremental branch: depends_on: {{ ref('int_post_changes') }}

with detections as (

    select * from {{ ref('stg_yolo_detections') }}
    {% if is_incremental() %}
    where {{ is_pending_photo() }}
    {% endif %}

),

latest_model as (

    select distinct on (message_key) message_key, model, analysed_at
    from {{ ref('stg_image_analyses') }}
    {% if is_incremental() %}
    where {{ is_pending_photo() }}
    {% endif %}
    order by message_key, analysed_at desc

),

messages as (

    select message_key, channel_key, date_key from {{ ref('fct_messages') }}

)

select
    d.detection_key,
    d.dedup_key,
    d.message_key,
    m.channel_key,
    m.date_key,
    d.channel_username,
    d.message_id,
    d.model,
    d.object_index,
    d.class_id,
    d.class_name,
    d.confidence,
    d.x1, d.y1, d.x2, d.y2,
    round(((d.x2 - d.x1) * (d.y2 - d.y1) / nullif(d.image_width * d.image_height, 0))::numeric, 4) as box_area_share,
    d.image_width,
    d.image_height,
    d.detected_at,
    l.analysed_at,
    {{ build_time() }} as built_at
from detections as d
inner join latest_model as l on l.message_key = d.message_key and l.model = d.model
inner join messages as m on m.message_key = d.message_key
