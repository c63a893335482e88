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
    where {{ changed_since_last_run('source_updated_at') }}

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
