{#- The lines that state a price: one row per non-empty line of a post that holds an amount in birr
    (price_pattern) and is no delivery fee, range of amounts or job advert line, with the three non-empty
    lines above it, where a price without a product of its own takes its product from. Posts without a
    price, and job adverts, are not split at all. -#}

with messages as (

    select
        message_key,
        channel_key,
        channel_username,
        message_id,
        message_date,
        date_key,
        updated_at,
        -- no-break spaces read as spaces, and lines end at \n alone
        replace(replace(message_text, chr(160), ' '), chr(13), '') as message_text
    from {{ ref('int_messages_deduplicated') }}
    where message_text ~* {{ price_pattern() }}
      and message_text !~* {{ job_post_pattern() }}

),

split as (

    -- Each post's non-empty lines, numbered as in the post, each with the three non-empty lines above it
    -- and whether those state a price (the pattern is evaluated once per line). The window runs inside
    -- the lateral, over one post's lines: a filter on the posts (the incremental marts' filter) still
    -- reaches the posts before any line is split.
    select
        m.message_key,
        m.channel_key,
        m.channel_username,
        m.message_id,
        m.message_date,
        m.date_key,
        m.updated_at,
        l.line_no,
        l.line,
        l.has_price,
        l.previous_line,
        l.previous_line_has_price,
        l.previous_line_2,
        l.previous_line_2_has_price,
        l.previous_line_3,
        l.previous_line_3_has_price
    from messages as m
    cross join lateral (
        select
            line_no,
            line,
            has_price,
            lag(line, 1) over by_line      as previous_line,
            lag(has_price, 1) over by_line as previous_line_has_price,
            lag(line, 2) over by_line      as previous_line_2,
            lag(has_price, 2) over by_line as previous_line_2_has_price,
            lag(line, 3) over by_line      as previous_line_3,
            lag(has_price, 3) over by_line as previous_line_3_has_price
        from (
            select t.line, t.line_no, t.line ~* {{ price_pattern() }} as has_price
            from regexp_split_to_table(m.message_text, '\n') with ordinality as t (line, line_no)
            where trim(t.line) <> ''
        ) as non_empty
        window by_line as (order by line_no)
    ) as l

)

select
    message_key,
    channel_key,
    channel_username,
    message_id,
    message_date,
    date_key,
    updated_at,
    line_no,
    line,
    previous_line,
    previous_line_has_price,
    previous_line_2,
    previous_line_2_has_price,
    previous_line_3,
    previous_line_3_has_price
from split
where has_price
  and line !~* {{ fee_line_pattern() }}
  and line !~* {{ range_pattern() }}
  and line !~* {{ job_line_pattern() }}
