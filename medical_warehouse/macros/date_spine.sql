{#- One row per day from start_date to end_date inclusive (SQL expressions yielding dates). -#}
{% macro date_spine(start_date, end_date) -%}
    select cast(d as date) as date_day
    from generate_series(cast({{ start_date }} as date), cast({{ end_date }} as date), interval '1 day') as d
{%- endmacro %}

{#- The yyyymmdd key of a date, or of a timestamp's UTC day (whatever the session's time zone: the daily
    rollups recompute days by this key). -#}
{% macro date_key(value, is_timestamp=false) -%}
    {%- if is_timestamp -%}
    cast(to_char({{ value }} at time zone 'UTC', 'YYYYMMDD') as integer)
    {%- else -%}
    cast(to_char({{ value }}, 'YYYYMMDD') as integer)
    {%- endif -%}
{%- endmacro %}
