{#- md5 of the given columns, NULL-safe and separator-delimited (what dbt_utils.generate_surrogate_key does). -#}
{% macro surrogate_key(columns) -%}
    md5(
    {%- for col in columns -%}
        coalesce(cast({{ col }} as text), '_null_'){% if not loop.last %} || '-' || {% endif %}
    {%- endfor -%}
    )
{%- endmacro %}
