{#- Each price with the product it is for: the line's own text when it names one, else the nearest line
    above that names one ("ENSURE 850GM" / "Price 5000 birr"), skipping up to two detail lines
    ("📦 100pack", "⏳ Jul-28"). product_name is NULL when neither does. -#}

with matches as (

    select * from {{ ref('int_price_matches') }}

),

named as (

    select
        message_key,
        channel_key,
        channel_username,
        message_id,
        message_date,
        date_key,
        updated_at,
        line_no,
        match_no,
        line,
        price_birr,
        currency_text,
        case
            when {{ has_letter('own_text') }} then own_text
            -- "Price 5000 birr", "Price 7500" or "600 | 05/2028 | 64birr": evaluated only for a price
            -- without a product on its own line (CASE is lazy)
            when previous_line !~* {{ detail_line_pattern() }}
                then {{ product_text('previous_line', 'previous_line_has_price') }}
            when previous_line_2 !~* {{ detail_line_pattern() }}
                then {{ product_text('previous_line_2', 'previous_line_2_has_price') }}
            when previous_line_3 !~* {{ detail_line_pattern() }}
                then {{ product_text('previous_line_3', 'previous_line_3_has_price') }}
        end as product_name
    from matches

)

select * from named
