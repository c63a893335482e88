with source as (

    select * from {{ source('raw', 'image_analyses') }}

),

renamed as (

    select
        {{ surrogate_key(['channel', 'message_id', 'model']) }} as analysis_key,
        lower(trim(channel)) || '/' || message_id::text                          as dedup_key,  -- raw has an index on it
        {{ surrogate_key(['channel', 'message_id']) }}          as message_key,
        channel                                                as channel_username,
        message_id,
        model,
        image_path,
        status,
        n_objects,
        reason,
        image_width,
        image_height,
        analysed_at
    from source

)

select * from renamed
