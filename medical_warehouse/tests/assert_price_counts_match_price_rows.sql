-- fct_messages' price fields agree with the rows of fct_product_prices, post by post. Fails when one of the
-- two was rebuilt without the other (e.g. the price model full-refreshed after a parsing change while
-- fct_messages kept its counts), or when an incremental run updated one and not the other.
with prices as (

    select message_key, count(*) as price_count, min(price_birr) as min_price_birr, max(price_birr) as max_price_birr
    from {{ ref('fct_product_prices') }}
    group by message_key

)

select m.message_key, m.price_count, p.price_count as price_rows, m.min_price_birr, p.min_price_birr as min_of_rows,
       m.max_price_birr, p.max_price_birr as max_of_rows
from {{ ref('fct_messages') }} as m
full join prices as p on p.message_key = m.message_key
where coalesce(m.price_count, -1) <> coalesce(p.price_count, 0)
   or m.min_price_birr is distinct from p.min_price_birr
   or m.max_price_birr is distinct from p.max_price_birr
