{#- The project's post-hook for every mart and incremental model: ANALYZE the table when it has no
    statistics yet (a first build, a full refresh: a new table) or when its row count moved by more than
    `fraction` since the last ANALYZE (autovacuum may be off, or late). A daily build that rewrote a few
    rows in a million keeps the statistics it has instead of sampling the table again. The count is
    pg_class.reltuples (what the last ANALYZE counted) against the live rows: the statistics system's
    change counter would also count the rows a table was created with, since those are added after the
    ANALYZE in the same transaction. -#}
{% macro analyze_if_stale(fraction=0.1) -%}
do $analyze$ begin
    if exists (select 1 from pg_class as c
               join pg_stat_user_tables as s on s.relid = c.oid
               where c.oid = '{{ this.include(database=false) }}'::regclass
                 and (c.reltuples < 0
                      or abs(s.n_live_tup - c.reltuples) > {{ fraction }} * greatest(c.reltuples, 1000))) then
        execute 'analyze {{ this.include(database=false) }}';
    end if;
end $analyze$
{%- endmacro %}
