{#- The project's post-hook for every mart and incremental model: ANALYZE the table when it has no
    statistics yet (a first build, a full refresh: a new table) or more than `fraction` of its rows changed
    since the last ANALYZE (autovacuum may be off, or late). A daily build that changed a few rows in a
    million keeps the statistics it has instead of sampling the table again. -#}
{% macro analyze_if_stale(fraction=0.1) -%}
do $analyze$ begin
    if exists (select 1 from pg_stat_user_tables
               where relid = '{{ this.include(database=false) }}'::regclass
                 and (coalesce(last_analyze, last_autoanalyze) is null
                      or n_mod_since_analyze > {{ fraction }} * greatest(n_live_tup, 1000))) then
        execute 'analyze {{ this.include(database=false) }}';
    end if;
end $analyze$
{%- endmacro %}
