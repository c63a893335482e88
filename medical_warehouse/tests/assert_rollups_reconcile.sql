-- The API's rollups add up to the facts they summarise, day by day and product by product (a row here is a
-- mismatch). A daily build checks the days and products it rebuilt (macros/test_scope.sql); a full build
-- every day, every product, and each product's mentions against the fact table itself.
with price_days as (

    select date_day from {{ ref('agg_product_daily') }} where {{ changed_rows('built_at') }}
    union
    select (message_date at time zone 'UTC')::date from {{ ref('fct_product_prices') }} where {{ changed_rows('built_at') }}

),

rolled_days as (

    select
        date_day,
        sum(mentions) filter (where channel_username is not null) as by_channel,
        sum(mentions) filter (where channel_username is null)     as all_channels
    from {{ ref('agg_product_daily') }}
    where date_day in (select date_day from price_days)
    group by date_day

),

fact_days as (

    select (message_date at time zone 'UTC')::date as date_day, count(*) as n
    from {{ ref('fct_product_prices') }}
    where date_key in (select {{ date_key('date_day') }} from price_days)
    group by 1

),

post_days as (

    select date_day from {{ ref('agg_channel_daily') }} where {{ changed_rows('built_at') }}
    union
    select (message_date at time zone 'UTC')::date from {{ ref('fct_messages') }} where {{ changed_rows('built_at') }}

),

channel_days as (

    select date_day, sum(posts) as n from {{ ref('agg_channel_daily') }}
    where date_day in (select date_day from post_days)
    group by date_day

),

message_days as (

    select (message_date at time zone 'UTC')::date as date_day, count(*) as n
    from {{ ref('fct_messages') }}
    where date_key in (select {{ date_key('date_day') }} from post_days)
    group by 1

),

visual_days as (

    select date_day, sum(posts) as n, sum(cardinality(views_sorted)) as views_listed
    from {{ ref('agg_visual_daily') }}
    where date_day in (select date_day from {{ ref('agg_visual_daily') }} where {{ changed_rows('built_at') }})
    group by date_day

),

visual_message_days as (

    select (message_date at time zone 'UTC')::date as date_day, count(*) as n
    from {{ ref('fct_messages') }}
    where date_key in (select {{ date_key('date_day') }} from visual_days)
    group by 1

),

products as (

    select product_key, mentions from {{ ref('agg_product_prices') }}
    where channel_username is null and {{ changed_rows('built_at') }}

),

counted as (

    select product_key, sum(n) as n from {{ ref('int_product_price_counts') }}
    where price_birr is not null and product_key in (select product_key from products)
    group by product_key

)

select 'agg_product_daily' as rollup, coalesce(f.date_day, r.date_day)::text as part, r.by_channel as rollup_total,
       f.n as fact_total
from rolled_days as r
full join fact_days as f on f.date_day = r.date_day
where r.by_channel is distinct from f.n or r.all_channels is distinct from f.n
union all
select 'agg_channel_daily', coalesce(f.date_day, r.date_day)::text, r.n, f.n
from channel_days as r
full join message_days as f on f.date_day = r.date_day
where r.n is distinct from f.n
union all
select 'agg_visual_daily', r.date_day::text, r.n, f.n
from visual_days as r
left join visual_message_days as f on f.date_day = r.date_day
where r.n is distinct from f.n or r.views_listed is distinct from r.n
union all
select 'agg_product_prices', p.product_key, p.mentions, c.n
from products as p
left join counted as c on c.product_key = p.product_key
where p.mentions is distinct from c.n
{% if tests_all_rows() %}
union all
-- every product's mentions against the facts, and no product of the facts missing from the rollup
select 'agg_product_prices (facts)', coalesce(p.product_key, f.product_key), p.mentions, f.n
from (select product_key, mentions from {{ ref('agg_product_prices') }} where channel_username is null) as p
full join (select product_key, count(*) as n from {{ ref('fct_product_prices') }} group by product_key) as f
    on f.product_key = p.product_key
where p.mentions is distinct from f.n
union all
-- every day of posts has its visual rows
select 'agg_visual_daily (facts)', f.date_day::text, v.n, f.n
from (select (message_date at time zone 'UTC')::date as date_day, count(*) as n
      from {{ ref('fct_messages') }} group by 1) as f
left join (select date_day, sum(posts) as n from {{ ref('agg_visual_daily') }} group by 1) as v
    on v.date_day = f.date_day
where v.n is distinct from f.n
{% endif %}
