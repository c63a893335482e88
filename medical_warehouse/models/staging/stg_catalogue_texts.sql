{#- Every distinct post text the catalogue has read (medical_etl/transform/catalogue/stage.py), with its offers'
    count and when it was read: a text re-read with no offer any more is here, not in stg_catalogue_offers. -#}
with source as (

    select * from {{ source('raw', 'catalogue_texts') }}

),

renamed as (

    select
        text_hash,
        parser_version,
        offers          as offer_count,
        read_at
    from source

)

select * from renamed
