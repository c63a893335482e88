{#- The project's generic tests (no hub packages: dbt deps cannot reach the hub). -#}
{#- Generic test: every non-null value of the column lies in [min_value, max_value] (either bound may
    be left out; inclusive=false makes both bounds strict). A row returned is a value out of range. -#}
{% test accepted_range(model, column_name, min_value=none, max_value=none, inclusive=true) %}
{%- set op_min = '>=' if inclusive else '>' -%}
{%- set op_max = '<=' if inclusive else '<' -%}
select {{ column_name }} as out_of_range_value
from {{ model }}
where {{ column_name }} is not null
  and not (
    {%- if min_value is not none %} {{ column_name }} {{ op_min }} {{ min_value }}{% endif %}
    {%- if min_value is not none and max_value is not none %} and{% endif %}
    {%- if max_value is not none %} {{ column_name }} {{ op_max }} {{ max_value }}{% endif %}
    {%- if min_value is none and max_value is none %} true{% endif %}
  )
{% endtest %}

{#- Generic test: no two rows share the values of `columns`. A row returned is a duplicated combination. -#}
{% test unique_combination(model, columns) %}
select {{ columns | join(', ') }}, count(*) as n
from {{ model }}
group by {{ columns | join(', ') }}
having count(*) > 1
{% endtest %}
