with source as (

    select * from {{ source('raw', 'image_detections') }}

),

renamed as (

    select
        {{ surrogate_key(['channel', 'message_id', 'model', 'object_index']) }} as detection_key,
        lower(trim(channel)) || '/' || message_id::text                          as dedup_key,  -- raw has an index on it
        {{ surrogate_key(['channel', 'message_id']) }}                        as message_key,
        channel                                                              as channel_username,
        message_id,
        model,
        object_index,
        image_path,
        class_id,
        lower(class_name)                                                    as class_name,
        confidence::numeric(6, 5)                                            as confidence,
        x1, y1, x2, y2,
        image_width,
        image_height,
        detected_at
    from source

)

select * from renamed
