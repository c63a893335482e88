{#- The incremental models' filter: the rows of `column` changed since the model's last run, i.e. newer
    than the newest source_updated_at the model holds (every incremental model stores its rows' source
    updated_at as source_updated_at). On a full build (or the first run) it is `true`: every row. -#}
{% macro changed_since_last_run(column) -%}
    {%- if is_incremental() -%}
        {{ column }} > (select coalesce(max(source_updated_at), '-infinity'::timestamptz) from {{ this }})
    {%- else -%}
        true
    {%- endif -%}
{%- endmacro %}

{#- Incremental pre-hook of fct_product_prices: drop the rows of every message changed since the last
    run (its post, its text's reading or one of its products' resolution), so a post edited to hold no
    price loses its old rows (delete+insert only deletes the keys it re-inserts). -#}
{% macro delete_prices_of_changed_messages() -%}
    delete from {{ this }}
    where message_key in (
        select message_key from {{ ref('int_messages_deduplicated') }}
        where {{ changed_since_last_run('updated_at') }}
    )
    or message_key in (
        select p.message_key from {{ this }} as p
        inner join {{ ref('int_messages_deduplicated') }} as m on m.message_key = p.message_key
        inner join {{ ref('stg_catalogue_offers') }} as o on o.text_hash = m.text_hash
        inner join {{ ref('stg_product_resolutions') }} as r on r.product_text_key = o.product_text_key
        where {{ changed_since_last_run('greatest(o.read_at, r.resolved_at)') }}
    )
{%- endmacro %}
