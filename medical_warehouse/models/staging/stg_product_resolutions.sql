{#- What each distinct product text names (medical_etl/transform/catalogue/identity.py): the product's identity
    (identity_key: one per generic, strength and form, else per name and kind) and its attributes. -#}
with source as (

    select * from {{ source('raw', 'product_resolutions') }}

),

renamed as (

    select
        ---------- keys
        product_text_key,
        {{ surrogate_key(['identity_key']) }}   as product_key,
        identity_key,

        ---------- the product
        product_name,
        generic_name,
        strength,
        dosage_form,
        product_kind,

        ---------- resolver bookkeeping
        match                                   as match_type,
        resolver_version,
        resolved_at

    from source

)

select * from renamed
