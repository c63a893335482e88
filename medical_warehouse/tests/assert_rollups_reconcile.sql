-- The API's rollups add up to the facts they summarise (a row here is a mismatch).
select 'agg_product_prices' as rollup, r.n as rollup_total, f.n as fact_total
from (select coalesce(sum(mentions), 0) as n from {{ ref('agg_product_prices') }} where channel_username is null) as r,
     (select count(*) as n from {{ ref('fct_product_prices') }}) as f
where r.n <> f.n
union all
select 'agg_product_daily', r.n, f.n
from (select coalesce(sum(mentions), 0) as n from {{ ref('agg_product_daily') }} where channel_username is not null) as r,
     (select count(*) as n from {{ ref('fct_product_prices') }}) as f
where r.n <> f.n
union all
select 'agg_product_daily (all channels)', r.n, f.n
from (select coalesce(sum(mentions), 0) as n from {{ ref('agg_product_daily') }} where channel_username is null) as r,
     (select count(*) as n from {{ ref('fct_product_prices') }}) as f
where r.n <> f.n
union all
select 'agg_channel_daily', r.n, f.n
from (select coalesce(sum(posts), 0) as n from {{ ref('agg_channel_daily') }}) as r,
     (select count(*) as n from {{ ref('fct_messages') }}) as f
where r.n <> f.n
