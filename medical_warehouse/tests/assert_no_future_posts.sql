-- Posts dated in the future (beyond a small clock-skew allowance) are bad data. A daily build checks the
-- posts it built (macros/test_scope.sql).
select message_key, message_date
from {{ ref('fct_messages') }}
where message_date > now() + make_interval(mins => {{ var('future_tolerance_minutes') }})
  and {{ changed_rows('built_at') }}
