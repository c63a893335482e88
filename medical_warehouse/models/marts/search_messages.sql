{{
    config(
        materialized='incremental',
        unique_key='message_key',
        incremental_strategy='delete+insert',
        on_schema_change='sync_all_columns'
    )
}}
{#- Full-text search over post text for the API: the stored tsvector ('simple' configuration, so
    Amharic (Ge'ez) and English words are both indexed as written, lower-cased) behind a GIN index. -#}

with messages as (

    select * from {{ ref('fct_messages') }}
    {% if is_incremental() %}
    where source_updated_at > (select coalesce(max(source_updated_at), '-infinity'::timestamptz) from {{ this }})
    {% endif %}

)

select
    message_key,
    channel_username,
    message_id,
    message_date,
    views,
    to_tsvector('simple', message_text) as search_vector,
    source_updated_at
from messages
