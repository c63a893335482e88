{#- A daily build tests what it built. On an incremental build the transform stage sets
    MEDICAL_ETL_DBT_TESTS_SINCE (when the last successful whole build started) and
    MEDICAL_ETL_DBT_TESTS_BUILT_AFTER (that build's built_at, its checkpoint in int_post_changes), both from
    raw.transform_state; then each data test reads, of the model it tests, only the raw rows loaded, read or
    resolved since, or the rows built after (the column that says so: changed_at_column). The weekly full
    refresh, a first build or a hand-run `dbt test` check every row. A failed build leaves both where they
    were, so the rows it loaded or built are tested again next time. -#}

{#- The column that tells when a row of `relation` arrived; '' for a relation tested whole (the small
    tables rebuilt every time). -#}
{% macro changed_at_column(relation) -%}
    {%- set columns = {
        'telegram_messages': 'updated_at', 'catalogue_texts': 'read_at', 'product_resolutions': 'resolved_at',
        'image_analyses': 'analysed_at', 'image_detections': 'detected_at',
        'stg_telegram_messages': 'updated_at', 'stg_catalogue_texts': 'read_at', 'stg_catalogue_offers': 'read_at',
        'stg_product_resolutions': 'resolved_at', 'stg_image_analyses': 'analysed_at',
        'stg_yolo_detections': 'detected_at',
        'int_messages_deduplicated': 'built_at', 'int_post_changes': 'built_at',
        'int_product_price_counts': 'built_at', 'fct_messages': 'built_at', 'fct_product_prices': 'built_at',
        'search_messages': 'built_at', 'agg_product_daily': 'built_at', 'agg_product_prices': 'built_at',
        'agg_channel_daily': 'built_at', 'fct_image_detections': 'built_at', 'fct_image_categories': 'built_at'} -%}
    {%- do return(columns.get(relation.identifier, '') if relation.identifier is defined else '') -%}
{%- endmacro %}

{#- The condition on `column` that selects the rows under test, or none when every row is tested. -#}
{% macro tests_scope(column) -%}
    {%- if not execute or flags.FULL_REFRESH -%}
        {%- do return(none) -%}
    {%- endif -%}
    {%- set built = column.split('.')[-1] == 'built_at' -%}
    {%- set since = env_var('MEDICAL_ETL_DBT_TESTS_BUILT_AFTER' if built else 'MEDICAL_ETL_DBT_TESTS_SINCE', '') -%}
    {%- do return((column ~ (' > ' if built else ' >= ') ~ "'" ~ since ~ "'::timestamptz") if since else none) -%}
{%- endmacro %}

{#- Whether this build's tests check every row. -#}
{% macro tests_all_rows() -%}
    {%- do return(tests_scope('built_at') is none) -%}
{%- endmacro %}

{#- The rows under test in a singular test: `true` when every row is tested. -#}
{% macro changed_rows(column) -%}
    {{- tests_scope(column) or 'true' -}}
{%- endmacro %}

{#- dbt's hook for the `where` config of generic tests (macros/materializations/tests/where_subquery.sql
    in dbt), with the daily scope added. -#}
{% macro default__get_where_subquery(relation) -%}
    {%- set conditions = [] -%}
    {%- set where = config.get('where', '') -%}
    {%- if where -%}{%- do conditions.append(where) -%}{%- endif -%}
    {%- set column = changed_at_column(relation) -%}
    {%- set scope = tests_scope(column) if column else none -%}
    {%- if scope -%}{%- do conditions.append(scope) -%}{%- endif -%}
    {%- if conditions -%}
        {%- do return('(select * from ' ~ relation ~ ' where ' ~ conditions | join(' and ') ~ ') dbt_subquery') -%}
    {%- else -%}
        {%- do return(relation) -%}
    {%- endif -%}
{%- endmacro %}
