-- fct_messages' price fields agree with the rows of fct_product_prices, post by post. Fails when one of the
-- two was rebuilt without the other (e.g. the price model full-refreshed after a parsing change while
-- fct_messages kept its counts), or when an incremental run updated one and not the other. A daily build
-- checks the posts it built in either (macros/test_scope.sql).
with posts as (

    select dedup_key from {{ ref('fct_messages') }} where {{ changed_rows('built_at') }}
    union
    select dedup_key from {{ ref('fct_product_prices') }} where {{ changed_rows('built_at') }}

),

prices as (

    select dedup_key, count(*) as price_count, min(price_birr) as min_price_birr, max(price_birr) as max_price_birr
    from {{ ref('fct_product_prices') }}
    where dedup_key in (select dedup_key from posts)
    group by dedup_key

),

messages as (

    select * from {{ ref('fct_messages') }} where dedup_key in (select dedup_key from posts)

)

select m.message_key, m.price_count, p.price_count as price_rows, m.min_price_birr, p.min_price_birr as min_of_rows,
       m.max_price_birr, p.max_price_birr as max_of_rows
from messages as m
full join prices as p on p.dedup_key = m.dedup_key
where coalesce(m.price_count, -1) <> coalesce(p.price_count, 0)
   or m.min_price_birr is distinct from p.min_price_birr
   or m.max_price_birr is distinct from p.max_price_birr
