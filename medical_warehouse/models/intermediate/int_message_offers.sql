{#- Every offer of every post: the post (int_messages_deduplicated), the offers the catalogue read from its
    text (stg_catalogue_offers, joined on the text's md5: a text posted twice was read once) and the product
    each names (stg_product_resolutions). changed_at is the latest of the post's update, its text's reading
    and its product's resolution: what the incremental marts select on. -#}

with messages as (

    select * from {{ ref('int_messages_deduplicated') }}

),

offers as (

    select * from {{ ref('stg_catalogue_offers') }}

),

products as (

    select * from {{ ref('stg_product_resolutions') }}

)

select
    m.dedup_key,
    m.message_key,
    m.channel_key,
    m.date_key,
    m.channel_username,
    m.message_id,
    m.message_date,
    o.line_no,
    o.match_no,
    o.product_text,
    o.price_birr,
    o.currency_text,
    o.source_line,
    p.product_key,
    greatest(m.updated_at, o.read_at, p.resolved_at) as changed_at
from messages as m
inner join offers as o on o.text_hash = m.text_hash
inner join products as p on p.product_text_key = o.product_text_key
