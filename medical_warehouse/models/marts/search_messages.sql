{{
    config(
        materialized='incremental',
        unique_key='dedup_key',
        incremental_strategy='delete+insert',
        on_schema_change='sync_all_columns'
    )
}}
{#- Full-text search over post text for the API: the stored tsvector ('simple' configuration, so
    Amharic (Ge'ez) and English words are both indexed as written, lower-cased) behind a GIN index.
    Incremental: only the posts of the change log's pending batches are indexed again. -#}
-- read in the incremental branch: depends_on: {{ ref('int_post_changes') }}

with messages as (

    select * from {{ ref('fct_messages') }}
    {% if is_incremental() %}
    where {{ is_pending_post() }}
    {% endif %}

)

select
    dedup_key,
    message_key,
    channel_username,
    message_id,
    message_date,
    views,
    to_tsvector('simple', message_text) as search_vector,
    source_updated_at,
    {{ build_time() }} as built_at
from messages
