-- A device, a cosmetic, a food or anything else never has a generic name.
select product_key, product_name, product_kind, generic_name
from {{ ref('dim_products') }}
where generic_name is not null and product_kind <> 'medicine'
