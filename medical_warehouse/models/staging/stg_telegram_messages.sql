with source as (

    select * from {{ source('raw', 'telegram_messages') }}

),

renamed as (

    select
        ---------- keys
        {{ surrogate_key(['channel', 'message_id']) }}       as message_key,
        {{ surrogate_key(['trim(channel)']) }}                as channel_key,
        -- one post whatever the case of its username (Telegram ignores it); raw has an index on it
        lower(trim(channel)) || '/' || message_id::text       as dedup_key,

        ---------- channel
        trim(channel)                                         as channel_username,
        nullif(trim(channel_title), '')                       as channel_title,
        channel_id,

        ---------- message
        message_id,
        message_date,
        {{ date_key('message_date', is_timestamp=true) }}   as date_key,
        extract(hour from message_date at time zone 'UTC')::int as hour_of_day,
        coalesce(message_text, '')                            as message_text,
        char_length(coalesce(message_text, ''))               as text_length,
        md5(message_text)                                     as text_hash,  -- the catalogue's key
        coalesce(views, 0)                                    as views,
        coalesce(forwards, 0)                                 as forwards,
        coalesce(replies, 0)                                  as replies,
        edit_date,
        edit_date is not null                                 as is_edited,
        grouped_id,
        reply_to_msg_id,

        ---------- media and forwards
        media_type,
        media_status,
        forward_from_id,
        nullif(trim(forward_from_name), '')                   as forward_from_name,
        (forward_from_id is not null or nullif(trim(forward_from_name), '') is not null) as is_forwarded,
        image_path,
        image_path is not null                                as has_image,

        ---------- loader bookkeeping (the deduplication's precedence, the incremental filter)
        scraped_at,
        source_file,
        source_position,
        loaded_at,
        updated_at

    from source

)

select * from renamed
