{#- One row per day from start_date to end_date inclusive (SQL expressions yielding dates). -#}
{% macro date_spine(start_date, end_date) -%}
    select cast(d as date) as date_day
    from generate_series(cast({{ start_date }} as date), cast({{ end_date }} as date), interval '1 day') as d
{%- endmacro %}

{% macro date_key(ts) -%}
    cast(to_char(cast({{ ts }} as date), 'YYYYMMDD') as integer)
{%- endmacro %}
