{#- The offers the catalogue read from each distinct post text (medical_etl/transform/catalogue/prices.py), with when
    the text was read (a re-read text's posts are rebuilt in fct_product_prices). -#}
with source as (

    select * from {{ source('raw', 'catalogue_offers') }}

),

texts as (

    select * from {{ source('raw', 'catalogue_texts') }}

),

renamed as (

    select
        ---------- keys
        o.text_hash,
        o.line_no,
        o.match_no,
        o.product_text_key,

        ---------- the offer as read
        o.product_text,
        o.price_birr,
        o.currency_text,
        o.source_line,

        ---------- catalogue bookkeeping
        t.parser_version,
        t.read_at

    from source as o
    inner join texts as t on t.text_hash = o.text_hash

)

select * from renamed
