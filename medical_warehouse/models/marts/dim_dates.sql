with bounds as (

    select
        coalesce(min(message_date), current_date)::date as first_day,
        greatest(coalesce(max(message_date), current_date)::date, current_date) as last_day
    from {{ ref('int_messages_deduplicated') }}

),

spine as (

    {{ date_spine('(select first_day from bounds)', '(select last_day from bounds)') }}

)

select
    {{ date_key('date_day') }}                       as date_key,
    date_day                                         as full_date,
    extract(year from date_day)::int                 as year,
    extract(quarter from date_day)::int              as quarter,
    extract(month from date_day)::int                as month,
    to_char(date_day, 'FMMonth')                     as month_name,
    extract(week from date_day)::int                 as iso_week,
    extract(day from date_day)::int                  as day_of_month,
    extract(isodow from date_day)::int               as day_of_week,
    to_char(date_day, 'FMDay')                       as day_name,
    extract(isodow from date_day) in (6, 7)          as is_weekend
from spine
