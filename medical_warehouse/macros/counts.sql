{#- Counts kept by difference (int_product_price_counts, int_views_counts) and the exact medians read from
    them (agg_product_prices, agg_image_engagement). -#}

{#- The rows of a counts model after a build's changes: `changes` (a CTE with the key columns and `change`,
    the sum of +1 / -1 of the posts' rows now and before) added to the counts this model holds. -#}
{% macro counts_after(changes, key_columns) -%}
    {%- set keys = [] -%}
    {%- for col in key_columns %}{% do keys.append('c.' ~ col) %}{% endfor -%}
    select
        {{ surrogate_key(keys) }} as count_key,
        {{ keys | join(', ') }},
        coalesce(t.n, 0) + c.change as n
    from {{ changes }} as c
    left join {{ this }} as t on t.count_key = {{ surrogate_key(keys) }}
{%- endmacro %}

{#- The values at the middle positions (0-based) of n sorted items counted by value: the first value whose
    running count (`running`) passes the position. The median is their mean. -#}
{% macro middle_values(value, running, total) -%}
    min({{ value }}) filter (where {{ running }} > floor(({{ total }} - 1) / 2.0)) as lower_middle,
    min({{ value }}) filter (where {{ running }} > ceil(({{ total }} - 1) / 2.0))  as upper_middle
{%- endmacro %}
