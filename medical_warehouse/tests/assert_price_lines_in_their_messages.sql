-- Every price row's line_no is a line of its post as the post reads now, and its source line states the
-- row's amount. Fails on a row an edit left behind (what fct_product_prices' incremental pre-hook removes)
-- or an amount read wrongly (e.g. "3,000" read as anything but 3000).
with priced_posts as materialized (

    select message_key, array_length(string_to_array(message_text, E'\n'), 1) as lines
    from {{ ref('fct_messages') }}
    where message_key in (select message_key from {{ ref('fct_product_prices') }})

)

select p.price_key, p.message_key, p.line_no, p.source_line, p.price_birr
from {{ ref('fct_product_prices') }} as p
left join priced_posts as m on m.message_key = p.message_key
where m.message_key is null
   or p.line_no > m.lines
   or position(trim_scale(p.price_birr)::text in replace(p.source_line, ',', '')) = 0
