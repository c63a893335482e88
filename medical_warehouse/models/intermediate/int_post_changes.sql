{{
    config(
        materialized='incremental',
        incremental_strategy='append',
        on_schema_change='sync_all_columns',
        indexes=[{'columns': ['built_at']}, {'columns': ['changed_at']}],
        post_hook=['{{ analyze_if_stale() }}']
    )
}}
{#- The change log every incremental mart works from. Each build appends one batch (built_at: the build's
    time): the posts whose row, text reading or products changed since the newest change already logged,
    with what the marts held for each before this build changed them, so a mart that recomputes a day or
    a product also recomputes the day or product a post has left:
      state 'new': the post as int_messages_deduplicated now has it (its day and channel);
      state 'old': the post's row in fct_messages (with its views and image group) and its offers in
                   fct_product_prices before this build (read from the tables themselves, not by ref:
                   this model runs before them).
    A post counts as changed when its row was loaded or changed, its text read again, one of its
    product texts resolved again, or its photo analysed (again).
    Every build also logs a 'checkpoint' row (dedup_key null): its built_at says the build ran (the data
    tests of the next daily build check the rows built after it, macros/test_scope.sql); on a full
    build, which rebuilds every mart from scratch (nothing is pending), it is the only row, and its
    changed_at is where the next build's changes start. Rebuild it with the
    models that read it (`int_post_changes+`), as the weekly full refresh does. -#}
-- read in the incremental branch: depends_on: {{ ref('stg_catalogue_texts') }} {{ ref('stg_catalogue_offers') }} {{ ref('stg_product_resolutions') }} {{ ref('stg_image_analyses') }}

{% if is_incremental() %}
{%- set since = watermark('changed_at') -%}
{%- set old_messages = marts_relation('fct_messages') -%}
{%- set old_prices = marts_relation('fct_product_prices') -%}
{%- set old_categories = marts_relation('fct_image_categories') -%}

with changes as (

    -- posts with a row loaded or changed
    select dedup_key, updated_at as changed_at
    from {{ ref('int_messages_deduplicated') }}
    where updated_at > {{ since }}

    union all

    -- posts whose text the catalogue read (again)
    select m.dedup_key, t.read_at
    from {{ ref('stg_catalogue_texts') }} as t
    inner join {{ ref('int_messages_deduplicated') }} as m on m.text_hash = t.text_hash
    where t.read_at > {{ since }}

    union all

    -- posts with an offer whose product text was (re-)resolved
    select m.dedup_key, r.resolved_at
    from {{ ref('stg_product_resolutions') }} as r
    inner join {{ ref('stg_catalogue_offers') }} as o on o.product_text_key = r.product_text_key
    inner join {{ ref('int_messages_deduplicated') }} as m on m.text_hash = o.text_hash
    where r.resolved_at > {{ since }}

    union all

    -- posts whose photo was analysed (again)
    select dedup_key, analysed_at from {{ ref('stg_image_analyses') }}
    where analysed_at > {{ since }}

),

posts as (

    select dedup_key, max(changed_at) as changed_at from changes group by dedup_key

)

select
    {{ build_time() }} as built_at, p.dedup_key, 'new'::text as state, m.message_key, m.channel_username,
    m.date_key, null::text as product_key, null::numeric(14, 2) as price_birr, p.changed_at,
    null::bigint as views, null::text as image_group
from posts as p
inner join {{ ref('int_messages_deduplicated') }} as m on m.dedup_key = p.dedup_key
{% if old_messages is not none %}
union all
select {{ build_time() }}, p.dedup_key, 'old', f.message_key, f.channel_username, f.date_key, null, null, p.changed_at,
       f.views,
       {% if old_categories is not none -%}
       {{ image_group('f.has_image', '(select c.image_category from ' ~ old_categories ~ ' as c where c.dedup_key = f.dedup_key limit 1)') }}
       {%- else -%}
       {{ image_group('f.has_image', 'null') }}
       {%- endif %}
from posts as p
inner join {{ old_messages }} as f on f.dedup_key = p.dedup_key
{% endif %}
{% if old_prices is not none %}
union all
select {{ build_time() }}, p.dedup_key, 'old', f.message_key, f.channel_username, f.date_key, f.product_key,
       f.price_birr, p.changed_at, null, null
from posts as p
inner join {{ old_prices }} as f on f.dedup_key = p.dedup_key
{% endif %}
union all
select {{ build_time() }}, null, 'checkpoint', null, null, null, null, null, (select max(changed_at) from posts),
       null, null

{% else %}

select
    {{ build_time() }} as built_at, null::text as dedup_key, 'checkpoint'::text as state, null::text as message_key,
    null::text as channel_username, null::integer as date_key, null::text as product_key,
    null::numeric(14, 2) as price_birr,
    greatest(
        (select max(updated_at) from {{ ref('int_messages_deduplicated') }}),
        (select max(read_at) from {{ ref('stg_catalogue_texts') }}),
        (select max(resolved_at) from {{ ref('stg_product_resolutions') }}),
        (select max(analysed_at) from {{ ref('stg_image_analyses') }})
    ) as changed_at,
    null::bigint as views, null::text as image_group

{% endif %}
