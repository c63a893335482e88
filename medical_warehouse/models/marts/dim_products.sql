{#- One row per product: a medicine is its generic (WHO INN), strength and dosage form whoever posts it and
    however it is spelt (Azitromicin 500 / Azithromycin tab / AZITHRAA500); any other product is its name
    and kind. product_name is the display name: a medicine's built from its identity ("Amoxicillin 500 mg
    capsule"), any other's its most posted spelling. Only products some offer names. -#}

with resolutions as (

    select * from {{ ref('stg_product_resolutions') }}
    where product_text_key in (select product_text_key from {{ ref('stg_catalogue_offers') }})

),

products as (

    select
        product_key,
        min(identity_key)                              as identity_key,
        mode() within group (order by product_name)    as posted_name,
        min(generic_name)                              as generic_name,
        min(strength)                                  as strength,
        min(dosage_form)                               as dosage_form,
        min(product_kind)                              as product_kind,
        count(*)                                       as spellings
    from resolutions
    group by product_key

)

select
    product_key,
    case
        when generic_name is not null
            then concat_ws(' ', upper(left(generic_name, 1)) || substr(generic_name, 2), strength, dosage_form)
        else posted_name
    end                                                as product_name,
    generic_name,
    strength,
    dosage_form,
    product_kind,
    spellings,
    identity_key
from products
