select price_key, price_birr
from {{ ref('fct_product_prices') }}
where price_birr <= 0
