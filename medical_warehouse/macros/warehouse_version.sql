{#- on-run-end: after a run that built at least one model or seed, record when the warehouse changed
    (raw.warehouse_version) and announce it (NOTIFY medical_etl_warehouse): the API's ETag and
    Last-Modified come from it. A run that built nothing (tests only, every model failed) leaves it. -#}
{% macro note_warehouse_version(results) %}
  {%- if execute -%}
    {%- set built = [] -%}
    {%- for r in results -%}
      {%- if r.node.resource_type in ('model', 'seed') and r.status == 'success' -%}
        {%- do built.append(r.node.unique_id) -%}
      {%- endif -%}
    {%- endfor -%}
    {%- if built and adapter.get_relation(database=target.database, schema='raw', identifier='warehouse_version') -%}
      insert into raw.warehouse_version (id, built_at, build_id)
      values (true, clock_timestamp(), '{{ invocation_id }}')
      on conflict (id) do update set built_at = excluded.built_at, build_id = excluded.build_id;
      notify medical_etl_warehouse, '{{ invocation_id }}'
    {%- endif -%}
  {%- endif -%}
{% endmacro %}
