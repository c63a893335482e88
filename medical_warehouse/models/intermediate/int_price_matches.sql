{#- The prices a line states: one row per amount price_pattern finds on a price line (match_no: its place
    on the line), with the amount in birr, the currency word as written (birr when none) and the line's
    own text before the amount, cleaned (own_text: the product, when the line names one). -#}

with price_lines as (

    select * from {{ ref('int_price_lines') }}

),

matches as (

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
        x.n                                                                          as match_no,
        p.line,
        cast(replace(coalesce(x.m[1], x.m[3], x.m[5]), ',', '') as numeric(14, 2))   as price_birr,
        lower(coalesce(x.m[2], x.m[4], 'birr'))                                      as currency_text,
        {{ clean_product('x.fragment') }}                                            as own_text,
        p.previous_line,
        p.previous_line_has_price,
        p.previous_line_2,
        p.previous_line_2_has_price,
        p.previous_line_3,
        p.previous_line_3_has_price
    from price_lines as p
    cross join lateral (
        select mt.n, mt.m, s.fragment
        from regexp_matches(p.line, {{ price_pattern() }}, 'gi') with ordinality as mt (m, n)
        inner join regexp_split_to_table(p.line, {{ price_pattern() }}, 'i') with ordinality as s (fragment, n)
            on s.n = mt.n
    ) as x

)

select * from matches
