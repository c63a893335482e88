-- Every price row's source line is line line_no of its post as the post reads now, and states the row's
-- amount. Fails on a row an edit left behind (what fct_product_prices' incremental pre-hook removes), a
-- line split or numbered wrongly, or an amount read wrongly (e.g. "3,000" read as anything but 3000).
with priced_posts as materialized (

    -- each post split once, as int_price_lines splits it (materialized: not once per price row)
    select
        message_key,
        string_to_array(replace(replace(message_text, chr(160), ' '), chr(13), ''), E'\n') as lines
    from {{ ref('fct_messages') }}
    where message_key in (select message_key from {{ ref('fct_product_prices') }})

)

select p.price_key, p.message_key, p.line_no, p.source_line, m.lines[p.line_no] as line_in_post, p.price_birr
from {{ ref('fct_product_prices') }} as p
inner join priced_posts as m on m.message_key = p.message_key
where m.lines[p.line_no] is distinct from p.source_line
   or position(trim_scale(p.price_birr)::text in replace(p.source_line, ',', '')) = 0
