{{
    config(
        materialized='incremental',
        incremental_strategy='append',
        on_schema_change='sync_all_columns',
        pre_hook="{% if is_incremental() %}delete from {{ this }} where {{ is_pending_photo() }}{% endif %}"
    )
}}
{#- append: the pre-hook has deleted the rows this build makes again (dbt's delete by unique key read the whole table) -#}
{#- One row per analysed photo (its most recent readable analysis) with its image category:
    promotional (a person and a product-like object), product_display (product-like object, no person),
    lifestyle (person, no product-like object), other. Product-like classes: seed product_like_classes.
    Incremental: a build recomputes the posts analysed since its newest analysis and the posts of the
    change log's pending batches. -#}
-- read in the incremental branch: depends_on: {{ ref('int_post_changes') }}

with analyses as (

    select distinct on (message_key) *
    from {{ ref('stg_image_analyses') }}
    where status in ('ok', 'no_objects')
    {% if is_incremental() %}
    and {{ is_pending_photo() }}
    {% endif %}
    order by message_key, analysed_at desc

),

objects as (

    select
        d.message_key,
        d.model,
        bool_or(d.class_name = 'person')        as has_person,
        bool_or(p.class_name is not null)       as has_product,
        string_agg(distinct d.class_name, ', ' order by d.class_name) as detected_classes,
        max(d.confidence)                       as max_confidence
    from {{ ref('stg_yolo_detections') }} as d
    left join {{ ref('product_like_classes') }} as p on p.class_name = d.class_name
    {% if is_incremental() %}
    where {{ is_pending_photo('d.dedup_key') }}
    {% endif %}
    group by d.message_key, d.model

),

messages as (

    select message_key, channel_key, date_key from {{ ref('fct_messages') }}

)

select
    a.dedup_key,
    a.message_key,
    m.channel_key,
    m.date_key,
    a.channel_username,
    a.message_id,
    a.model,
    a.n_objects,
    coalesce(o.has_person, false)  as has_person,
    coalesce(o.has_product, false) as has_product,
    o.detected_classes,
    o.max_confidence,
    case
        when o.has_person and o.has_product then 'promotional'
        when o.has_product then 'product_display'
        when o.has_person then 'lifestyle'
        else 'other'
    end as image_category,
    a.analysed_at,
    {{ build_time() }} as built_at
from analyses as a
inner join messages as m on m.message_key = a.message_key
left join objects as o on o.message_key = a.message_key and o.model = a.model
