-- Every price row's line_no is a line of its post as the post reads now, and its source line states the
-- row's amount. Fails on a row an edit left behind (what fct_product_prices' incremental pre-hook removes)
-- or an amount read wrongly (e.g. "3,000" read as anything but 3000). A daily build checks the rows it
-- built (macros/test_scope.sql).
with prices as (

    select * from {{ ref('fct_product_prices') }} where {{ changed_rows('built_at') }}

),

priced_posts as materialized (

    select dedup_key, array_length(string_to_array(message_text, E'\n'), 1) as lines
    from {{ ref('fct_messages') }}
    where dedup_key in (select dedup_key from prices)

)

select p.price_key, p.message_key, p.line_no, p.source_line, p.price_birr
from prices as p
left join priced_posts as m on m.dedup_key = p.dedup_key
where m.dedup_key is null
   or p.line_no > m.lines
   or position(trim_scale(p.price_birr)::text in replace(p.source_line, ',', '')) = 0
