{{
    config(
        materialized='incremental',
        unique_key='message_key',
        incremental_strategy='delete+insert',
        on_schema_change='sync_all_columns',
        pre_hook="{% if is_incremental() %}{{ delete_prices_of_changed_messages() }}{% endif %}"
    )
}}
{#- One row per (message, product, price in birr) a post offers for sale. With unique_key = message_key,
    an edited post's rows are all replaced on the next incremental run; the pre-hook also removes the
    rows of a post edited to hold no price any more (delete+insert only deletes keys it re-inserts). -#}

with messages as (

    select message_key, channel_key, channel_username, message_id, message_date, date_key, updated_at,
           replace(replace(message_text, chr(160), ' '), chr(13), '') as message_text
    from {{ ref('int_messages_deduplicated') }}
    where message_text ~* {{ price_pattern() }}
      and message_text !~* {{ job_post_pattern() }}
      and {{ changed_since_last_run('updated_at') }}

),

lines as (

    select m.*, l.line, l.line_no
    from messages as m
    cross join lateral regexp_split_to_table(m.message_text, '\n') with ordinality as l (line, line_no)
    where trim(l.line) <> ''

),

with_context as (

    select
        *,
        lag(line, 1) over (partition by message_key order by line_no) as previous_line,
        lag(line, 2) over (partition by message_key order by line_no) as previous_line_2,
        lag(line, 3) over (partition by message_key order by line_no) as previous_line_3
    from lines

),

price_lines as (

    select * from with_context
    where line ~* {{ price_pattern() }}
      and line !~* {{ fee_line_pattern() }}
      and line !~* {{ range_pattern() }}
      and line !~* {{ job_line_pattern() }}

),

priced as (

    -- Fragment n of a line (split at the prices) is the text before price n: one lateral per line,
    -- no self-join, so the plan stays linear however many lines match.
    select
        p.message_key,
        p.channel_key,
        p.channel_username,
        p.message_id,
        p.message_date,
        p.date_key,
        p.updated_at,
        p.line_no,
        x.n as match_no,
        p.line,
        {{ clean_product('x.fragment') }} as own_text,
        p.previous_line,
        p.previous_line_2,
        p.previous_line_3,
        cast(replace(coalesce(x.m[1], x.m[3], x.m[5]), ',', '') as numeric(14, 2)) as price_birr,
        lower(coalesce(x.m[2], x.m[4], 'birr')) as currency_text
    from price_lines as p
    cross join lateral (
        select mt.n, mt.m, s.fragment
        from regexp_matches(p.line, {{ price_pattern() }}, 'gi') with ordinality as mt (m, n)
        inner join regexp_split_to_table(p.line, {{ price_pattern() }}, 'i') with ordinality as s (fragment, n)
            on s.n = mt.n
    ) as x

),

named as (

    select
        *,
        case
            when {{ has_letter('own_text') }} then own_text
            -- "Price 5000 birr", "Price 7500" or "600 | 05/2028 | 64birr": the product is the nearest line
            -- above that names one, skipping up to two detail lines ("📦 100pack", "⏳ Jul-28"); evaluated
            -- only for a price without a product on its own line (CASE is lazy)
            when previous_line !~* {{ detail_line_pattern() }} then {{ product_text('previous_line') }}
            when previous_line_2 !~* {{ detail_line_pattern() }} then {{ product_text('previous_line_2') }}
            when previous_line_3 !~* {{ detail_line_pattern() }} then {{ product_text('previous_line_3') }}
        end as product_name
    from priced

),

final as (

    select distinct on (message_key, lower(product_name), price_birr)
        {{ surrogate_key(['message_key', 'line_no', 'match_no']) }} as price_key,
        message_key,
        channel_key,
        date_key,
        channel_username,
        message_id,
        message_date,
        product_name,
        lower(product_name)                                       as product_name_normalized,
        price_birr,
        currency_text,
        line_no,
        line                                                      as source_line,
        updated_at                                                as source_updated_at
    from named
    where product_name is not null
      and price_birr > 0
      and price_birr < 10000000
    order by message_key, lower(product_name), price_birr, line_no, match_no

)

select * from final
