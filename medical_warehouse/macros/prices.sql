{#-
  Price recognition, shared by the price model and its tests. A price is either
    * a number (thousands separators allowed) followed by a currency word: birr, br, ETB or ብር,
      not followed by another letter ("450birr", "1,500 ብር", "100 ETB"), or
    * a number after the banknote emoji, the channels' price marker ("💵280", "💵3,000 birr").
  Groups: 1 = amount after 💵, 3 = amount before a currency word.
-#}
{% macro price_pattern() -%}
    '(?:💵\s*([0-9]{1,3}(?:,[0-9]{3})+|[0-9]+(?:\.[0-9]+)?)(?:\s*(birr|br|etb|ብር)(?![a-zA-Zሀ-፿]))?|([0-9]{1,3}(?:,[0-9]{3})+|[0-9]+(?:\.[0-9]+)?)\s*(birr|br|etb|ብር)(?![a-zA-Zሀ-፿]))'
{%- endmacro %}

{#- Lines that mention money that is not a product price: delivery and transport fees. -#}
{% macro fee_line_pattern() -%}
    '(deliver|transport|shipping|\mfees?\M|ትራንስፖርት|ማድረሻ|ዴሊቨሪ)'
{%- endmacro %}

{#- Posts whose amounts are salaries: job adverts. -#}
{% macro job_post_pattern() -%}
    '(vac+an+c?y|\mjobs?\M|salary|hiring|recruit|ደመወዝ|ክፍት የስራ|የሥራ ማስታወቂያ)'
{%- endmacro %}

{#- A range of amounts ("70 birr - 500 birr", "ከ70 - 500 ብር") is a fee scale, not a product price. -#}
{% macro range_pattern() -%}
    '[0-9]\s*(birr|br|etb|ብር)?\s*(-|–|to)\s*[0-9]+\s*(birr|br|etb|ብር)'
{%- endmacro %}

{#- A product name has at least one letter (Latin, Ge'ez or the styled Latin some posts use). -#}
{% macro has_letter(expr) -%}
    ({{ expr }} ~ '[A-Za-zሀ-፿\U0001D400-\U0001D7FF]')
{%- endmacro %}

{#- Product text of a line fragment: emoji, bullets, leader dots and the word "price" removed. -#}
{% macro clean_product(expr) -%}
    nullif(trim(regexp_replace(regexp_replace(regexp_replace(regexp_replace(regexp_replace(
        regexp_replace({{ expr }},
            '[\U0001F000-\U0001FAFF\u2190-\u21FF\u2300-\u23FF\u25A0-\u27BF\u2B00-\u2BFF\uFE0F\u200D\u20E3]', ' ', 'g'),
            '\.{2,}|…|_+', ' ', 'g'),
            '^[\s#*•:;,.|>=/-]+|[\s#*•:;,.|>=/(\[-]+$', '', 'g'),
            '^(price|ዋጋ)\s*[:=-]?\s*', '', 'i'),
            '\s*(price|ዋጋ|only|for|at)\s*[:=-]?$', '', 'i'),
            '\s+', ' ', 'g')), '')
{%- endmacro %}

{#- Incremental pre-hook of fct_product_prices: drop the rows of every message changed since the last
    run, so a post edited to hold no price loses its old rows. -#}
{% macro delete_prices_of_changed_messages() -%}
    delete from {{ this }}
    where message_key in (
        select message_key from {{ ref('stg_telegram_messages') }}
        where updated_at > (select coalesce(max(source_updated_at), '-infinity'::timestamptz) from {{ this }})
    )
{%- endmacro %}
