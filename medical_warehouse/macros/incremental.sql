{#- The incremental models' filter: the rows of `column` changed since the model's last run, i.e. newer
    than the newest source_updated_at the model holds (every incremental model stores its rows' source
    updated_at as source_updated_at). On a full build (or the first run) it is `true`: every row.
    The watermark is read when the SQL is compiled and written in as a literal: against a subquery the
    planner would guess that a third of the rows qualify and join whole tables; against a constant it
    sees, from the column's statistics, the day's few rows. -#}
{% macro changed_since_last_run(column) -%}
    {%- if is_incremental() -%}
        {%- set watermark = '-infinity' -%}
        {%- if execute -%}
            {%- set result = run_query("select coalesce(max(source_updated_at), '-infinity'::timestamptz)::text from " ~ this) -%}
            {%- set watermark = result.columns[0].values()[0] -%}
        {%- endif -%}
        {{ column }} > '{{ watermark }}'::timestamptz
    {%- else -%}
        true
    {%- endif -%}
{%- endmacro %}

{#- The posts whose offers may have changed since fct_product_prices' last run: posts changed, posts whose
    text was (re-)read by the catalogue, posts with an offer whose product was (re-)resolved. Each set is
    found from its own small side first (texts read, products resolved since), never by testing every
    offer, so the cost follows the day's changes. -#}
{% macro messages_with_changed_offers() -%}
    select message_key from {{ ref('int_messages_deduplicated') }}
    where {{ changed_since_last_run('updated_at') }}
    union
    select message_key from {{ ref('int_messages_deduplicated') }}
    where text_hash in (
        select text_hash from {{ ref('stg_catalogue_texts') }}
        where {{ changed_since_last_run('read_at') }}
        union
        select o.text_hash from {{ ref('stg_catalogue_offers') }} as o
        inner join {{ ref('stg_product_resolutions') }} as r on r.product_text_key = o.product_text_key
        where {{ changed_since_last_run('r.resolved_at') }}
    )
{%- endmacro %}

{#- Incremental pre-hook of fct_product_prices: drop the rows of every post whose offers may have changed,
    so a post edited to hold no price loses its old rows (delete+insert only deletes the keys it
    re-inserts). -#}
{% macro delete_prices_of_changed_messages() -%}
    delete from {{ this }}
    where message_key in ({{ messages_with_changed_offers() }})
{%- endmacro %}

{#- The UTC days of the posts whose offers may have changed since the model's last run (agg_product_daily
    rebuilds those days only). -#}
{% macro days_with_changed_offers() -%}
    select distinct (message_date at time zone 'UTC')::date from {{ ref('int_messages_deduplicated') }}
    where message_key in ({{ messages_with_changed_offers() }})
{%- endmacro %}
