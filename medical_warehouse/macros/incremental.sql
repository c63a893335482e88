{#- Stage 3's incremental machinery. A daily build does work in proportion to the posts that are new or
    changed, whatever the history: int_post_changes logs, batch by batch, the posts changed since the
    last build with what the marts held for them before (their day, channel, products and prices), and
    each incremental mart applies the batches it has not applied yet (pending_changes), recomputing only
    the posts, days and products they name. -#}

{#- This build's time (dbt's run_started_at, UTC): the audit column built_at of every incremental model's
    rows, and the batch time of int_post_changes. -#}
{% macro build_time() -%}
    '{{ run_started_at.isoformat() }}'::timestamptz
{%- endmacro %}

{#- The newest value of `column` in `relation` (this model by default), as a literal: against a subquery
    the planner guesses that a third of the rows qualify and joins whole tables; against a constant it
    sees, from the column's statistics, the day's few rows. '-infinity' when the table is empty. -#}
{% macro watermark(column, relation=none) -%}
    {%- set value = '-infinity' -%}
    {%- if execute -%}
        {%- set sql = "select coalesce(max(" ~ column ~ "), '-infinity'::timestamptz)::text from " ~ (relation or this) -%}
        {%- set value = run_query(sql).columns[0].values()[0] -%}
    {%- endif -%}
    '{{ value }}'::timestamptz
{%- endmacro %}

{#- The change log's rows this incremental model has not applied yet: the batches logged after the newest
    batch it applied (its rows' newest built_at; a batch that left it no row is applied again, which
    recomputes the same rows). Only ever called inside `{% if is_incremental() %}`. -#}
{% macro pending_changes() -%}
    select * from {{ ref('int_post_changes') }}
    where built_at > {{ watermark('built_at') }} and dedup_key is not null
{%- endmacro %}

{#- Whether `column` (a dedup_key) is a post of the pending batches. An array, not a semi-join: the planner
    then reads the few posts by index instead of joining whole tables first. -#}
{% macro is_pending_post(column='dedup_key') -%}
    {{ column }} = any(array(select distinct dedup_key from ({{ pending_changes() }}) as pending))
{%- endmacro %}

{#- Whether `column` (a date_key, or with as_date a date) is a UTC day the pending batches' posts had before
    them or have now. -#}
{% macro is_pending_day(column='date_key', as_date=false) -%}
    {%- set day = "to_date(date_key::text, 'YYYYMMDD')" if as_date else 'date_key' -%}
    {{ column }} = any(array(select distinct {{ day }} from ({{ pending_changes() }}) as pending))
{%- endmacro %}

{#- A relation of the marts schema by name, without a ref: int_post_changes reads what fct_messages and
    fct_product_prices hold before this build changes them, so it must run before them, not after. none
    when the table does not exist yet. -#}
{% macro marts_relation(name) -%}
    {%- do return(adapter.get_relation(database=target.database, schema=generate_schema_name('marts', none),
                                       identifier=name)) -%}
{%- endmacro %}

{#- Whether `column` (a dedup_key) is a post whose photo analyses the detection models must read again: a
    post of the pending batches (its key or day may have changed), or one analysed after the newest
    analysis this model holds (analysed_at). -#}
{% macro is_pending_photo(column='dedup_key') -%}
    {{ column }} = any(array(
        select dedup_key from ({{ pending_changes() }}) as pending
        union
        select dedup_key from {{ ref('stg_image_analyses') }} where analysed_at > {{ watermark('analysed_at') }}
    ))
{%- endmacro %}

{#- A post's image group for the engagement rollups: its photo's image category when the photo was
    analysed, 'not_analysed' when not (yet), 'without_photo' for a post with no photo. -#}
{% macro image_group(has_image, image_category) -%}
    case when not {{ has_image }} then 'without_photo' else coalesce({{ image_category }}, 'not_analysed') end
{%- endmacro %}
