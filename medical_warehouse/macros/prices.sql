{#-
  Price recognition, shared by the price models (models/intermediate/int_price_*, int_named_prices) and
  their tests. A price is either
    * a number (thousands separators allowed) followed by a currency word: birr, br, ETB or ብር,
      not followed by another letter ("450birr", "1,500 ብር", "100 ETB"), or
    * a number after the banknote emoji, the channels' price marker ("💵280", "💵3,000 birr"), or
    * a line holding nothing but "Price" or "ዋጋ" and an amount, no currency ("Price 7500", "PRICE:340,000"):
      in these channels that is birr. The amount starts with 1-9 and has at most 7 digits (no phone
      number), and nothing but punctuation or emoji may follow it on the line (no "180 tablets", no
      "100ml", no date "12/05").
  (?n) makes ^ and $ match at line ends, so the pattern also finds such a line inside a whole post.
  Groups: 1 = amount after 💵, 3 = amount before a currency word, 5 = amount of a bare "Price" line.
-#}
{% macro price_pattern() -%}
    '(?n)(?:💵\s*([0-9]{1,3}(?:,[0-9]{3})+|[0-9]+(?:\.[0-9]+)?)(?:\s*(birr|br|etb|ብር)(?![a-zA-Zሀ-፿]))?|([0-9]{1,3}(?:,[0-9]{3})+|[0-9]+(?:\.[0-9]+)?)\s*(birr|br|etb|ብር)(?![a-zA-Zሀ-፿])|^[^0-9a-zA-Zሀ-፿]*(?:price|ዋጋ)[^0-9a-zA-Zሀ-፿]*([1-9][0-9]{0,2}(?:,[0-9]{3})+|[1-9][0-9]{0,6}(?:\.[0-9]+)?)[^0-9a-zA-Zሀ-፿]*$)'
{%- endmacro %}

{#- Lines that mention money that is not a product price: delivery and transport fees. -#}
{% macro fee_line_pattern() -%}
    '(deliver|transport|shipping|\mfees?\M|ትራንስፖርት|ማድረሻ|ዴሊቨሪ)'
{%- endmacro %}

{#- Posts whose amounts are salaries: job adverts. -#}
{% macro job_post_pattern() -%}
    '(vac+an+c?y|\mjobs?\M|salary|hiring|recruit|ደመወዝ|ክፍት የስራ|የሥራ ማስታወቂያ)'
{%- endmacro %}

{#- A line of a job advert that says none of the words above: a job title with years of experience
    ("MEDICAL DOCTOR 1 YEAR PLACE BUTAGERA 30,000 ETB PLUS"), "N years ... place", or a net/gross
    amount ("ARBAMINCH 25,000eTB NET"). -#}
{% macro job_line_pattern() -%}
    '(\m(doctors?|pharmacists?|pharmacy technicians?|druggists?|drugists?|nurses?|midwi(fe|ves)|accountants?|cashiers?|health officers?)\M.*\m[0-9]+\s*(-\s*[0-9]+\s*)?(years?|yrs)\M|\m[0-9]+\s*(-\s*[0-9]+\s*)?(years?|yrs)\s+(of\s+)?(experience|place)\M|(birr|br|etb|ብር)\s*(net|gross)\M)'
{%- endmacro %}

{#- A detail line under a product ("📦 100pack", "⏳ Jul-28", "🕰 08/28", "Ex:D: 26/10/2030"): the product
    of a price below it is further up. -#}
{% macro detail_line_pattern() -%}
    '^[\s•.-]*(📦|⏳|⌛|🕰|⏰|exp|ex\s*:\s*d|qty|quantity)'
{%- endmacro %}

{#- The product a line names for a price below it (its cleaned text), or NULL when it names none: no
    letter, a price of its own (has_price: the line matches price_pattern, computed once per line in
    int_price_lines), or a job advert line. -#}
{% macro product_text(line, has_price) -%}
    (select c from (select {{ clean_product(line) }} as c) as candidate
     where {{ has_letter('c') }} and not {{ has_price }} and {{ line }} !~* {{ job_line_pattern() }})
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
