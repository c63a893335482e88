select message_key, views, forwards, replies, text_length
from {{ ref('fct_messages') }}
where views < 0 or forwards < 0 or replies < 0 or text_length < 0
