{{
    config(
        materialized='incremental',
        incremental_strategy='append',
        on_schema_change='sync_all_columns',
        pre_hook="{% if is_incremental() %}delete from {{ this }} where {{ is_pending_post() }}{% endif %}"
    )
}}
{#- append: the pre-hook has deleted the rows this build makes again (dbt's delete by unique key read the whole table) -#}
{#- One row per (message, product, price in birr) a post offers for sale: the offers the catalogue read
    (medical_etl/transform/catalogue) tied to their product in dim_products. Incremental: the rows of the posts in
    the change log's pending batches (int_post_changes) are replaced; the pre-hook also removes the rows
    of a post edited to hold no price any more, or whose username's other case won the deduplication. -#}
-- read in the incremental branch: depends_on: {{ ref('int_post_changes') }}

with offers as (

    select * from {{ ref('int_message_offers') }}
    {% if is_incremental() %}
    where {{ is_pending_post() }}
    {% endif %}

),

final as (

    -- a product at the same price twice in a post is one offer: its first mention is kept
    select distinct on (message_key, product_key, price_birr)
        {{ surrogate_key(['message_key', 'line_no', 'match_no']) }} as price_key,
        dedup_key,
        message_key,
        channel_key,
        date_key,
        product_key,
        channel_username,
        message_id,
        message_date,
        product_text                                              as product_name,
        price_birr,
        currency_text,
        line_no,
        source_line,
        changed_at                                                as source_updated_at,
        {{ build_time() }}                                        as built_at
    from offers
    where price_birr < 10000000
    order by message_key, product_key, price_birr, line_no, match_no

)

select * from final
